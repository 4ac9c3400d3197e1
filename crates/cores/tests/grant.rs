//! Grant rules: who may claim which cores, holding and release.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

use std::path::PathBuf;

use worknode_cores::{
    CoreAuthority, CorePlan, CpuSet, GrantError, Host, PlanConfig, SysRoot, WorknodeClass,
    WorknodeSpec,
};

fn server_authority() -> CoreAuthority {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/server-2s64t");
    let host = Host::discover(&SysRoot::new(root));
    let config = PlanConfig {
        best_effort: false,
        housekeeping: None,
        worknodes: vec![
            WorknodeSpec::new("raft", WorknodeClass::Critical),
            WorknodeSpec::new("net", WorknodeClass::High),
            WorknodeSpec::new("api", WorknodeClass::Normal),
            WorknodeSpec::new("plugin", WorknodeClass::Normal),
        ],
    };
    CoreAuthority::new(CorePlan::build(&host, &config).unwrap())
}

fn set(text: &str) -> CpuSet {
    text.parse().unwrap()
}

#[test]
fn planned_grants_hold_whole_cores_until_dropped() {
    let authority = server_authority();
    let raft = authority.grant("raft").unwrap();
    assert_eq!(raft.cpus(), &set("2"));
    assert_eq!(raft.held(), &set("2,34"), "the idle sibling is held too");
    assert_eq!(
        authority.grant("raft").unwrap_err(),
        GrantError::Held { cpu: 2, holder: "raft".into() }
    );
    drop(raft);
    let again = authority.grant("raft").unwrap();
    assert_eq!(again.worknode(), "raft");
}

#[test]
fn untrusted_worknodes_cannot_take_critical_cores() {
    let authority = server_authority();
    for cpu in ["2", "34"] {
        let error = authority.grant_cpus("plugin", &set(cpu)).unwrap_err();
        assert_eq!(
            error,
            GrantError::ReservedForCritical {
                worknode: "plugin".into(),
                class: WorknodeClass::Normal,
                cpu: cpu.parse().unwrap(),
                owner: "raft".into()
            }
        );
    }
    // Even a high-class worknode is refused a critical core.
    assert!(matches!(
        authority.grant_cpus("net", &set("2")),
        Err(GrantError::ReservedForCritical { owner, .. }) if owner == "raft"
    ));
    // Another exclusive worknode's core is refused too, naming the owner.
    assert_eq!(
        authority.grant_cpus("plugin", &set("1")).unwrap_err(),
        GrantError::ReservedFor { worknode: "plugin".into(), cpu: 1, owner: "net".into() }
    );
    // Unplanned isolated cores are for critical worknodes only.
    assert_eq!(
        authority.grant_cpus("plugin", &set("9")).unwrap_err(),
        GrantError::Isolated { worknode: "plugin".into(), class: WorknodeClass::Normal, cpu: 9 }
    );
}

#[test]
fn shared_cpus_can_be_granted_to_several_worknodes() {
    let authority = server_authority();
    let api = authority.grant("api").unwrap();
    let plugin = authority.grant("plugin").unwrap();
    assert_eq!(api.cpus(), plugin.cpus());
    assert!(api.held().is_empty());
}

#[test]
fn unknown_and_unusable_requests_are_refused() {
    let authority = server_authority();
    assert_eq!(
        authority.grant("ghost").unwrap_err(),
        GrantError::UnknownWorknode { worknode: "ghost".into() }
    );
    assert!(matches!(
        authority.grant_cpus("api", &set("99")),
        Err(GrantError::NotUsable { cpu: 99, .. })
    ));
}
