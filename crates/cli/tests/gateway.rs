//! etcd's JSON gateway on the client port, driven with `curl` as etcd's documentation
//! drives it: keys, a transaction, leases, a watch that streams, errors with etcd's
//! texts and grpc-gateway's codes.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on an unexpected value")]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use serde_json::{json, Value};
use support::ProcessCluster;

const ROTATION: &str = "[schedule]\nrotation = \"on\"\nslot_ms = 50\nslots_per_turn = 4\n";

/// POSTs `body` to `path`; the HTTP status and the answer.
fn post(member: SocketAddr, path: &str, body: &Value) -> (u16, Value) {
    let output = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-X", "POST", "-d", &body.to_string()])
        .arg(format!("http://{member}{path}"))
        .output()
        .expect("curl is installed (scripts/deps.sh installs it)");
    let text = String::from_utf8(output.stdout).unwrap();
    let (answer, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), serde_json::from_str(answer).unwrap_or(Value::String(answer.into())))
}

fn base64(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char
            } else {
                '='
            });
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_json_gateway_serves_keys_transactions_leases_and_watches() {
    let cluster = ProcessCluster::start_with("gateway", 3, 20, ROTATION);
    cluster.leader().await;
    let (one, two) = (cluster.members[0].client, cluster.members[1].client);

    // A watch on member 2 streams one line per response while member 1 writes.
    let mut watcher = Command::new("curl")
        .args(["-s", "-N", "-X", "POST", "-d"])
        .arg(
            json!({"create_request": {"key": base64("gw/"), "range_end": base64("gw0")}})
                .to_string(),
        )
        .arg(format!("http://{two}/v3/watch"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watcher.stdout.take().unwrap()).lines();
    let created: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
    assert_eq!(created["result"]["created"], true, "{created}");

    let (status, put) =
        post(one, "/v3/kv/put", &json!({"key": base64("gw/a"), "value": base64("1")}));
    assert_eq!(status, 200, "{put}");
    let revision = put["header"]["revision"].as_str().unwrap().parse::<i64>().unwrap();
    let (_, got) = post(one, "/v3/kv/range", &json!({"key": base64("gw/a")}));
    assert_eq!(got["kvs"][0]["value"], base64("1"));
    assert_eq!(got["kvs"][0]["version"], "1", "int64 as a string: {got}");
    assert_eq!(got["count"], "1");

    let txn = json!({
        "compare": [{"key": base64("gw/a"), "target": "VALUE", "result": "EQUAL", "value": base64("1")}],
        "success": [{"request_put": {"key": base64("gw/b"), "value": base64("2")}}],
        "failure": [{"request_range": {"key": base64("gw/a")}}],
    });
    let (_, answered) = post(one, "/v3/kv/txn", &txn);
    assert_eq!(answered["succeeded"], true, "{answered}");
    let (_, deleted) = post(one, "/v3/kv/deleterange", &json!({"key": base64("gw/a")}));
    assert_eq!(deleted["deleted"], "1");

    let mut events = Vec::new();
    while events.len() < 3 {
        let line: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
        for event in line["result"]["events"].as_array().unwrap() {
            let kind = event["type"].as_str().unwrap_or("PUT").to_owned();
            events.push((kind, event["kv"]["key"].as_str().unwrap().to_owned()));
        }
    }
    let expected = [("PUT", "gw/a"), ("PUT", "gw/b"), ("DELETE", "gw/a")]
        .map(|(kind, key)| (kind.to_owned(), base64(key)));
    assert_eq!(events, expected);
    let _ = watcher.kill();
    let _ = watcher.wait();

    let (_, granted) = post(two, "/v3/lease/grant", &json!({"TTL": "60"}));
    let id = granted["ID"].as_str().unwrap().to_owned();
    post(
        one,
        "/v3/kv/put",
        &json!({"key": base64("gw/leased"), "value": base64("x"), "lease": id}),
    );
    let (_, ttl) = post(one, "/v3/lease/timetolive", &json!({"ID": id, "keys": true}));
    assert_eq!(ttl["keys"], json!([base64("gw/leased")]), "{ttl}");
    let (_, leases) = post(one, "/v3/lease/leases", &json!({}));
    assert_eq!(leases["leases"][0]["ID"], id.as_str());
    let (_, revoked) = post(two, "/v3/lease/revoke", &json!({"ID": id}));
    assert!(revoked["header"].is_object(), "{revoked}");
    let (_, gone) = post(one, "/v3/kv/range", &json!({"key": base64("gw/leased")}));
    assert!(gone.get("kvs").is_none(), "the revoke deleted the key: {gone}");

    // etcd's errors, with grpc-gateway's status and body.
    let (status, refused) = post(one, "/v3/kv/range", &json!({"key": ""}));
    assert_eq!((status, refused["code"].as_i64()), (400, Some(3)));
    assert_eq!(refused["message"], "etcdserver: key is not provided");
    post(one, "/v3/kv/compaction", &json!({"revision": revision.to_string()}));
    let (status, compacted) = post(
        one,
        "/v3/kv/range",
        &json!({"key": base64("gw/b"), "revision": (revision - 1).to_string()}),
    );
    assert_eq!(status, 400);
    assert_eq!(compacted["message"], "etcdserver: mvcc: required revision has been compacted");
    let (status, bad) = post(one, "/v3/kv/put", &json!({"key": 5}));
    assert_eq!(status, 400);
    assert!(bad["message"].as_str().unwrap().starts_with("the request body is not a PutRequest"));
    let (status, auth) = post(one, "/v3/auth/enable", &json!({}));
    assert_eq!((status, auth["code"].as_i64()), (501, Some(12)), "{auth}");
    let (status, members) = post(two, "/v3/cluster/member/list", &json!({}));
    assert_eq!((status, members["members"].as_array().unwrap().len()), (200, 3));
}
