//! Static CPU isolation for worknodes.
//!
//! A *worknode* is a named unit of execution (an OS thread running an event loop: the
//! Raft loop, network I/O, API handlers). This crate discovers what the host offers
//! ([`Host`]), audits what stands between a worknode and a quiet core ([`audit`]),
//! places worknodes on cores ([`CorePlan`]), mints the capability to claim a reserved
//! core ([`CoreAuthority`], [`CoreGrant`]), pins threads ([`spawn_worknode`]) and emits
//! deployment settings ([`artifacts`]).
//!
//! Everything reads under a root directory ([`SysRoot`]) so tests run against fixture
//! trees of other hosts. `unsafe` is confined to the system-call wrappers in `sys.rs`.

#![deny(unsafe_code)]

pub mod artifacts;
mod audit;
mod cpuset;
mod grant;
mod host;
pub mod jitter;
mod pin;
mod plan;
pub mod process;
mod sys;
mod sysroot;
pub mod telemetry;
pub mod watchdog;

pub use audit::{audit, AuditItem, AuditReport, Severity, Status};
pub use cpuset::{CpuListError, CpuSet, CPU_MAX};
pub use grant::{CoreAuthority, CoreGrant, GrantError};
pub use host::{kernel_param, CpuTimes, CpuTopology, Host, Isolcpus};
pub use pin::{
    current_affinity, current_is_fifo, current_thread_id, make_current_background, spawn_worknode,
    PinError, PinOptions, PinReport, PinStep, Worknode,
};
pub use plan::{
    CorePlan, CpuAffinity, Placement, PlanConfig, PlanError, WorknodeClass, WorknodeSpec,
};
pub use sysroot::SysRoot;

/// Discovers the live host (`/`).
pub fn live_host() -> (SysRoot, Host) {
    let sys = SysRoot::new("/");
    let host = Host::discover(&sys);
    (sys, host)
}
