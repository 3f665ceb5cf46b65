//! kube-apiserver's audit log on the test control plane (`testenv::AUDIT_POLICY`): what was
//! asked of the API server, by whom, in order. Tests prove "nothing was written" and "this
//! came after that" from it rather than by waiting and looking.

use serde_json::Value;

use crate::harness;

/// The controller's User-Agent prefix (`upgrade_controller::user_agent`).
pub const CONTROLLER_AGENT: &str = "upgrade-controller/";

/// One audited request (stage ResponseComplete).
#[derive(Debug, Clone)]
pub struct Entry {
    pub verb: String,
    /// The authenticated user (`system:serviceaccount:<ns>:<name>` for a ServiceAccount token).
    pub user: String,
    pub user_agent: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    pub code: i64,
    /// `stageTimestamp`, RFC 3339 with microseconds (sorts as a string).
    pub at: String,
}

impl Entry {
    fn from(v: &Value) -> Option<Self> {
        if v["stage"] != "ResponseComplete" {
            return None;
        }
        let s = |v: &Value| v.as_str().unwrap_or("").to_string();
        let r = &v["objectRef"];
        Some(Entry {
            verb: s(&v["verb"]),
            user: s(&v["user"]["username"]),
            user_agent: s(&v["userAgent"]),
            resource: s(&r["resource"]),
            subresource: s(&r["subresource"]),
            namespace: s(&r["namespace"]),
            name: s(&r["name"]),
            code: v["responseStatus"]["code"].as_i64().unwrap_or(0),
            at: s(&v["stageTimestamp"]),
        })
    }

    /// Sent by the controller.
    pub fn by_controller(&self) -> bool {
        self.user_agent.starts_with(CONTROLLER_AGENT)
    }

    /// A request that may change something.
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// Every audited request so far, oldest first.
pub fn entries() -> Vec<Entry> {
    let path = harness::env()
        .audit_log
        .clone()
        .expect("the test control plane records an audit log");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Entry::from(&v))
        .collect()
}

/// The controller's requests on `resource` (`upgraderequests`, `clusterversionshadows`) named
/// `name` in `namespace`.
pub fn controller_requests(resource: &str, namespace: &str, name: &str) -> Vec<Entry> {
    entries()
        .into_iter()
        .filter(|e| {
            e.by_controller()
                && e.resource == resource
                && e.namespace == namespace
                && e.name == name
        })
        .collect()
}
