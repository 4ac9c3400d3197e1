//! `worknode.Admin`: the state digest, and fault injection for tests.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status};
use worknode_cores::telemetry::Telemetry;
use worknode_kv as kv;
use worknode_raft::rotation::Rotation;
use worknode_raft::transport::Blocked;
use worknode_raft::ClientRequest;

use crate::adminpb;
use crate::authority::Caller;
use crate::service::Shared;

/// `worknode.Admin`.
#[derive(Clone, Debug)]
pub struct AdminService {
    /// Shared member state.
    pub shared: Arc<Shared>,
    /// The transport's partition set.
    pub blocked: Blocked,
    /// Whether `Partition` and `InjectFault` may be used.
    pub allow_fault_injection: bool,
    /// Who may call the mutating methods.
    pub admin: crate::authority::AdminConfig,
    /// Scheduled leadership settings, when rotation is on.
    pub rotation: Option<worknode_raft::rotation::RotationConfig>,
    /// This process's CPU and thread samples.
    pub telemetry: Arc<Mutex<Telemetry>>,
    /// The rotation last built, with the applied changes it was built from.
    pub rotation_cache: Arc<Mutex<Option<RotationCache>>>,
}

/// A rotation and the applied schedule changes it was built from.
pub type RotationCache = (Vec<kv::ScheduleChange>, Rotation);

/// A settings change starts at the first epoch boundary at least this far away, so every
/// member has applied it before it holds.
const CHANGE_MARGIN: std::time::Duration = std::time::Duration::from_secs(1);

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Attempts at a schedule change that conflicts with concurrent ones.
const SET_ATTEMPTS: usize = 3;

impl AdminService {
    /// `base` with the request's fields applied, validated.
    fn merged(
        &self,
        base: &kv::ScheduleSettings,
        request: &adminpb::SetScheduleRequest,
    ) -> Result<kv::ScheduleSettings, Status> {
        let mut settings = base.clone();
        if let Some(on) = request.rotation {
            settings.rotation = on;
        }
        if let Some(algorithm) = &request.algorithm {
            settings.algorithm = algorithm.clone();
        }
        if !request.stakes.is_empty() {
            if let Some(unknown) =
                request.stakes.iter().find(|s| !self.shared.members.iter().any(|m| m.id == s.id))
            {
                return Err(Status::invalid_argument(format!(
                    "stakes: member {} is not in the cluster",
                    unknown.id
                )));
            }
            settings.stakes = self
                .shared
                .members
                .iter()
                .map(|m| {
                    (m.id, request.stakes.iter().find(|s| s.id == m.id).map_or(0, |s| s.stake))
                })
                .collect();
        }
        settings.slot_ms = request.slot_ms.unwrap_or(settings.slot_ms);
        settings.slots_per_turn = request.slots_per_turn.unwrap_or(settings.slots_per_turn);
        settings.slots_per_epoch = request.slots_per_epoch.unwrap_or(settings.slots_per_epoch);
        settings.seed = request.seed.unwrap_or(settings.seed);
        Rotation::validate(&settings).map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(settings)
    }

    /// Runs `f` on the rotation as this member's applied log defines it. The rotation
    /// (and the schedules it computed) is kept between calls and rebuilt only when the
    /// applied changes differ from those it was built from.
    fn with_rotation<T>(
        &self,
        f: impl FnOnce(&mut Rotation, &[kv::ScheduleChange]) -> Result<T, Status>,
    ) -> Result<T, Status> {
        let config = self.rotation.as_ref().ok_or_else(|| {
            Status::failed_precondition("this member's [schedule] settings are invalid")
        })?;
        let changes = self.shared.node.schedule_changes();
        let mut cache = self.rotation_cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, rotation)) = cache.as_mut().filter(|(seen, _)| *seen == changes) {
            return f(rotation, seen);
        }
        let mut rotation =
            Rotation::new(config.clone()).map_err(|e| Status::internal(e.to_string()))?;
        rotation.set_changes(&changes);
        let (seen, rotation) = cache.insert((changes, rotation));
        f(rotation, seen)
    }

    /// Fault injection needs both the authority to change the cluster and a member that
    /// allows it (`allow_fault_injection`, for tests).
    fn may_inject_faults(&self, method: &str, caller: &Caller) -> Result<(), Status> {
        self.admin.authorize(method, caller)?;
        if !self.allow_fault_injection {
            return Err(Status::new(
                Code::PermissionDenied,
                "fault injection is off (allow_fault_injection = false)",
            ));
        }
        Ok(())
    }
}

/// Most turns a `Schedule` answer lists.
const UPCOMING_MAX: u32 = 1_000;

#[tonic::async_trait]
impl adminpb::admin_server::Admin for AdminService {
    async fn digest(
        &self,
        _request: Request<adminpb::DigestRequest>,
    ) -> Result<Response<adminpb::DigestResponse>, Status> {
        let (reply, answer) = oneshot::channel();
        self.shared
            .node
            .submit(ClientRequest::Digest { reply })
            .map_err(|e| crate::convert::status(&e))?;
        let machine =
            answer.await.map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        // Hashing every key takes long on a large store: on the blocking pool, not the loop.
        let (applied_index, digest) =
            tokio::task::spawn_blocking(move || (machine.applied_index(), machine.digest()))
                .await
                .map_err(|_| Status::unavailable("etcdserver: server stopped"))?;
        Ok(Response::new(adminpb::DigestResponse {
            member_id: self.shared.member_id,
            applied_index,
            digest,
            revision: self.shared.node.status().revision,
        }))
    }

    async fn schedule(
        &self,
        request: Request<adminpb::ScheduleRequest>,
    ) -> Result<Response<adminpb::ScheduleResponse>, Status> {
        let wanted = request.into_inner().turns.clamp(1, UPCOMING_MAX);
        let status = self.shared.node.status();
        let now_ns = unix_ns();
        let (position, settings, pending, upcoming) = self.with_rotation(|rotation, _| {
            let position = rotation.position(now_ns).ok_or_else(|| {
                Status::failed_precondition(
                    "the slot clock has not started (genesis is in the future)",
                )
            })?;
            let (settings, pending) = rotation.settings_at(now_ns);
            let settings = settings.clone();
            let mut upcoming = Vec::new();
            let mut first = position.turn_first_slot;
            for _ in 0..wanted {
                let Some(member) = rotation.scheduled_leader(first) else {
                    break;
                };
                let last = rotation.turn_last_slot(first);
                let known = self.shared.members.iter().find(|m| m.id == member);
                upcoming.push(adminpb::UpcomingTurn {
                    first_slot: first,
                    last_slot: last,
                    member_id: member,
                    name: known.map(|m| m.name.clone()).unwrap_or_default(),
                    client: known.map(|m| m.client.to_string()).unwrap_or_default(),
                });
                first = last + 1;
            }
            Ok((position, settings, pending, upcoming))
        })?;
        Ok(Response::new(adminpb::ScheduleResponse {
            rotation: position.rotating,
            algorithm: settings.algorithm.clone(),
            epoch: position.epoch,
            slot: position.slot,
            slot_ms: settings.slot_ms,
            next_turn_in_ms: (position.until_next_turn_ns / 1_000_000) as u64,
            leader_id: status.leader_id,
            member_id: self.shared.member_id,
            upcoming,
            leader_changes_total: self
                .shared
                .node
                .counters()
                .leader_changes
                .load(Ordering::Relaxed),
            slots_per_turn: settings.slots_per_turn,
            slots_per_epoch: settings.slots_per_epoch,
            pending_change_epoch: pending.unwrap_or(0),
            stakes: settings
                .stakes
                .iter()
                .map(|&(id, stake)| adminpb::MemberStake { id, stake })
                .collect(),
            clocks: self
                .shared
                .node
                .clock_offsets()
                .into_iter()
                .map(|(member_id, offset)| adminpb::PeerClock {
                    member_id,
                    offset_ns: offset.offset_ns,
                    round_trip_ns: offset.round_trip_ns,
                })
                .collect(),
        }))
    }

    async fn set_schedule(
        &self,
        request: Request<adminpb::SetScheduleRequest>,
    ) -> Result<Response<adminpb::SetScheduleResponse>, Status> {
        self.admin.authorize("SetSchedule", &Caller::of(&request))?;
        let request = request.into_inner();
        // Another change committed between reading the settings and applying ours makes
        // ours a conflict: read again and retry, a few times.
        for _ in 0..SET_ATTEMPTS {
            // The base, its anchor and `based_on` all come from one view of the log.
            let (settings, anchor, based_on) = self.with_rotation(|rotation, changes| {
                let settings = self.merged(rotation.latest_settings(), &request)?;
                let anchor = rotation.anchor(unix_ns(), CHANGE_MARGIN).ok_or_else(|| {
                    Status::failed_precondition(
                        "the slot clock has not started (genesis is in the future)",
                    )
                })?;
                Ok((settings, anchor, changes.last().map_or(0, |c| c.epoch)))
            })?;
            let change = kv::ScheduleChange {
                epoch: anchor.epoch,
                first_slot: anchor.first_slot,
                start_unix_ns: anchor.start_unix_ns,
                based_on,
                settings,
            };
            let written = self.shared.write(kv::Command::SetSchedule(change)).await?;
            match written.applied.outcome {
                kv::Outcome::ScheduleSet { epoch } => {
                    return Ok(Response::new(adminpb::SetScheduleResponse {
                        epoch,
                        first_slot: anchor.first_slot,
                        starts_in_ms: anchor.start_unix_ns.saturating_sub(unix_ns()) / 1_000_000,
                    }))
                }
                kv::Outcome::ScheduleConflict { .. } => continue,
                kv::Outcome::Error(error) => return Err(crate::convert::kv_status(&error)),
                other => return Err(Status::internal(format!("unexpected outcome {other:?}"))),
            }
        }
        Err(Status::aborted("other schedule changes kept committing first; try again"))
    }

    async fn turns(
        &self,
        request: Request<adminpb::TurnsRequest>,
    ) -> Result<Response<adminpb::TurnsResponse>, Status> {
        let limit = request.into_inner().limit.max(1) as usize;
        let all = self.shared.node.turns();
        let turns = all[all.len().saturating_sub(limit)..]
            .iter()
            .map(|t| adminpb::TurnRecord {
                epoch: t.epoch,
                turn: t.turn,
                first_slot: t.first_slot,
                scheduled: t.scheduled,
                leader_before: t.leader_before,
                leader_after: t.leader_after,
                handoff_ms: t.handoff.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                skipped: t.skipped.clone().unwrap_or_default(),
                boundary_unix_us: t.boundary_unix_us,
                timeout_now_ms: t.timeout_now.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                stepped_down_ms: t.stepped_down.map_or(0.0, |d| d.as_secs_f64() * 1e3),
                takeover: t.takeover.clone().unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(adminpb::TurnsResponse { member_id: self.shared.member_id, turns }))
    }

    async fn telemetry(
        &self,
        _request: Request<adminpb::TelemetryRequest>,
    ) -> Result<Response<adminpb::TelemetryResponse>, Status> {
        let mut telemetry = self.telemetry.lock().unwrap_or_else(PoisonError::into_inner);
        // Threads started since the last call (peer writers, blocking pool) are watched
        // from now on; their load shows after two samples.
        telemetry.watch_all_threads();
        let cpus: Vec<adminpb::CpuLoad> = telemetry
            .core_usage()
            .into_iter()
            .map(|u| adminpb::CpuLoad {
                cpu: u.cpu,
                user: u.user,
                system: u.system,
                irq: u.irq,
                softirq: u.softirq,
                steal: u.steal,
                idle: u.idle,
            })
            .collect();
        let online = cpus.len();
        let usage = telemetry.thread_usage();
        let worknodes = telemetry
            .watched()
            .map(|watched| {
                let used = usage.iter().find(|u| u.tid == watched.tid);
                adminpb::WorknodeLoad {
                    worknode: watched.worknode.clone(),
                    tid: watched.tid,
                    cpus: watched.cpus.to_string(),
                    pinned: !watched.cpus.is_empty() && watched.cpus.len() < online,
                    cpu_pct: used.map_or(0.0, |u| u.cpu_pct),
                    voluntary_per_s: used.map_or(0.0, |u| u.voluntary_per_s),
                    involuntary_per_s: used.map_or(0.0, |u| u.involuntary_per_s),
                    last_cpu: used.and_then(|u| u.cpu).map_or(-1, |cpu| cpu as i32),
                }
            })
            .collect();
        let alerts = telemetry.alerts().map(ToString::to_string).collect();
        let name = self
            .shared
            .members
            .iter()
            .find(|m| m.id == self.shared.member_id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        Ok(Response::new(adminpb::TelemetryResponse {
            member_id: self.shared.member_id,
            name,
            pid: std::process::id(),
            cpus,
            worknodes,
            alerts,
            interval_ms: telemetry.interval().as_millis() as u64,
        }))
    }

    async fn inject_fault(
        &self,
        request: Request<adminpb::InjectFaultRequest>,
    ) -> Result<Response<adminpb::InjectFaultResponse>, Status> {
        self.may_inject_faults("InjectFault", &Caller::of(&request))?;
        match request.into_inner().fault.as_str() {
            "raft-panic" => self
                .shared
                .node
                .submit(ClientRequest::InjectPanic)
                .map_err(|error| Status::new(Code::Unavailable, error.to_string()))?,
            other => {
                return Err(Status::new(
                    Code::InvalidArgument,
                    format!("unknown fault {other:?} (known: raft-panic)"),
                ))
            }
        }
        Ok(Response::new(adminpb::InjectFaultResponse {}))
    }

    async fn partition(
        &self,
        request: Request<adminpb::PartitionRequest>,
    ) -> Result<Response<adminpb::PartitionResponse>, Status> {
        self.may_inject_faults("Partition", &Caller::of(&request))?;
        let peers = request.into_inner().peers;
        let mut blocked = self.blocked.lock().unwrap_or_else(PoisonError::into_inner);
        blocked.clear();
        blocked.extend(peers);
        Ok(Response::new(adminpb::PartitionResponse {}))
    }
}
