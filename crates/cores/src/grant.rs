//! Grants: the capability to pin a worknode onto planned cores.
//!
//! A [`CoreGrant`] can only be minted by the [`CoreAuthority`] that owns a validated
//! [`CorePlan`]: it has no public constructor and is not `Clone`, so holding one proves
//! the plan allowed it. Exclusive cores are held by one grant at a time and released
//! when the grant is dropped. A worknode that is not critical can never obtain a grant
//! for a core a critical worknode owns.
//!
//! ```
//! use worknode_cores::{live_host, CoreAuthority, CorePlan, CpuAffinity, PlanConfig, WorknodeClass, WorknodeSpec};
//!
//! let (_, host) = live_host();
//! let cpu = host.usable().first().expect("this machine has a CPU");
//! let raft = WorknodeSpec {
//!     cpu_affinity: CpuAffinity::Cpus([cpu].into_iter().collect()),
//!     ..WorknodeSpec::new("raft", WorknodeClass::Critical)
//! };
//! let config = PlanConfig { best_effort: true, worknodes: vec![raft], ..PlanConfig::default() };
//! let authority = CoreAuthority::new(CorePlan::build(&host, &config)?);
//! let grant = authority.grant("raft")?;
//! assert!(grant.cpus().contains(cpu));
//! // The core is held until the grant is dropped.
//! assert!(authority.grant("raft").is_err());
//! drop(grant);
//! assert!(authority.grant("raft").is_ok());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Grants cannot be forged or copied:
//!
//! ```compile_fail
//! use worknode_cores::{CoreGrant, CpuSet};
//! // No public constructor: the fields are private.
//! let forged = CoreGrant { worknode: "evil".into(), cpus: CpuSet::new() };
//! ```
//!
//! ```compile_fail
//! fn copy(grant: &worknode_cores::CoreGrant) -> worknode_cores::CoreGrant {
//!     grant.clone() // CoreGrant is not Clone
//! }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::cpuset::CpuSet;
use crate::plan::{CorePlan, WorknodeClass};

/// Why a grant was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    /// The plan has no such worknode.
    #[error("worknode {worknode:?} is not in the core plan")]
    UnknownWorknode {
        /// The name asked for.
        worknode: String,
    },
    /// The worknode is planned unpinned: there is nothing to grant.
    #[error("worknode {worknode:?} is planned without CPU affinity: there are no cores to grant")]
    Unpinned {
        /// The worknode.
        worknode: String,
    },
    /// The CPU belongs to a critical worknode and the requester is someone else.
    #[error("worknode {worknode:?} ({class}) may not use CPU {cpu}: it is reserved for critical worknode {owner:?}")]
    ReservedForCritical {
        /// The requester.
        worknode: String,
        /// The requester's class.
        class: WorknodeClass,
        /// The CPU.
        cpu: u32,
        /// The critical worknode that owns it.
        owner: String,
    },
    /// The CPU belongs to another exclusive worknode.
    #[error("worknode {worknode:?} may not use CPU {cpu}: it is reserved for worknode {owner:?}")]
    ReservedFor {
        /// The requester.
        worknode: String,
        /// The CPU.
        cpu: u32,
        /// The owner.
        owner: String,
    },
    /// An isolated CPU asked for by a worknode that is not critical.
    #[error("worknode {worknode:?} ({class}) may not use isolated CPU {cpu}")]
    Isolated {
        /// The requester.
        worknode: String,
        /// The requester's class.
        class: WorknodeClass,
        /// The CPU.
        cpu: u32,
    },
    /// A CPU outside what the plan could use.
    #[error("worknode {worknode:?}: CPU {cpu} is not usable here (usable: {usable})")]
    NotUsable {
        /// The requester.
        worknode: String,
        /// The CPU.
        cpu: u32,
        /// CPUs the plan could use.
        usable: CpuSet,
    },
    /// Another live grant holds the CPU.
    #[error("CPU {cpu} is held by worknode {holder:?}'s grant")]
    Held {
        /// The CPU.
        cpu: u32,
        /// The worknode whose grant holds it.
        holder: String,
    },
}

/// Exclusive CPUs currently held, and by whom.
type Holders = Mutex<BTreeMap<u32, String>>;

/// Mints grants for one validated plan.
#[derive(Debug)]
pub struct CoreAuthority {
    plan: CorePlan,
    holders: Arc<Holders>,
}

/// Proof that the plan lets `worknode` run on `cpus`. Not `Clone`; no public
/// constructor; exclusive CPUs are released when it is dropped.
#[derive(Debug)]
pub struct CoreGrant {
    worknode: String,
    cpus: CpuSet,
    /// CPUs this grant holds exclusively (released on drop).
    held: CpuSet,
    holders: Arc<Holders>,
}

impl CoreGrant {
    /// The worknode this grant is for.
    pub fn worknode(&self) -> &str {
        &self.worknode
    }

    /// The CPUs the worknode may pin to.
    pub fn cpus(&self) -> &CpuSet {
        &self.cpus
    }

    /// The CPUs this grant holds exclusively.
    pub fn held(&self) -> &CpuSet {
        &self.held
    }
}

impl Drop for CoreGrant {
    fn drop(&mut self) {
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        for cpu in self.held.iter() {
            let holder = holders.remove(&cpu);
            assert_eq!(
                holder.as_deref(),
                Some(self.worknode.as_str()),
                "CPU {cpu} held by someone else"
            );
        }
    }
}

impl CoreAuthority {
    /// Takes ownership of a validated plan.
    pub fn new(plan: CorePlan) -> Self {
        Self { plan, holders: Arc::new(Mutex::new(BTreeMap::new())) }
    }

    /// The plan grants are minted from.
    pub fn plan(&self) -> &CorePlan {
        &self.plan
    }

    /// A grant for the CPUs the plan gives `worknode`.
    pub fn grant(&self, worknode: &str) -> Result<CoreGrant, GrantError> {
        let placement = self
            .plan
            .placement(worknode)
            .ok_or_else(|| GrantError::UnknownWorknode { worknode: worknode.to_owned() })?;
        if !placement.is_pinned() {
            return Err(GrantError::Unpinned { worknode: worknode.to_owned() });
        }
        self.grant_cpus(worknode, &placement.cpus.clone())
    }

    /// A grant for specific CPUs, checked against the plan: CPUs an exclusive worknode
    /// owns go only to that worknode, isolated CPUs only to critical worknodes, and a
    /// CPU held by a live grant to nobody else.
    pub fn grant_cpus(&self, worknode: &str, cpus: &CpuSet) -> Result<CoreGrant, GrantError> {
        let placement = self
            .plan
            .placement(worknode)
            .ok_or_else(|| GrantError::UnknownWorknode { worknode: worknode.to_owned() })?;
        let class = placement.class;
        let mut held = CpuSet::new();
        for cpu in cpus.iter() {
            if !self.plan.usable().contains(cpu) {
                return Err(GrantError::NotUsable {
                    worknode: worknode.to_owned(),
                    cpu,
                    usable: self.plan.usable().clone(),
                });
            }
            match self.plan.owner_of(cpu) {
                Some(owner) if owner.worknode != worknode => {
                    return Err(if owner.class == WorknodeClass::Critical {
                        GrantError::ReservedForCritical {
                            worknode: worknode.to_owned(),
                            class,
                            cpu,
                            owner: owner.worknode.clone(),
                        }
                    } else {
                        GrantError::ReservedFor {
                            worknode: worknode.to_owned(),
                            cpu,
                            owner: owner.worknode.clone(),
                        }
                    });
                }
                Some(_) => {
                    held.insert(cpu);
                }
                None if self.plan.isolated().contains(cpu) && class != WorknodeClass::Critical => {
                    return Err(GrantError::Isolated { worknode: worknode.to_owned(), class, cpu });
                }
                None => {}
            }
        }
        // The idle SMT siblings of an exclusive placement are held with it.
        if class.is_exclusive() && !held.is_empty() {
            held = held.union(&placement.reserved);
        }
        let mut holders = self.holders.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((cpu, holder)) = held.iter().find_map(|cpu| Some((cpu, holders.get(&cpu)?))) {
            return Err(GrantError::Held { cpu, holder: holder.clone() });
        }
        for cpu in held.iter() {
            holders.insert(cpu, worknode.to_owned());
        }
        Ok(CoreGrant {
            worknode: worknode.to_owned(),
            cpus: cpus.clone(),
            held,
            holders: Arc::clone(&self.holders),
        })
    }
}
