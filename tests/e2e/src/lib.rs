//! End-to-end test support for upgrade-controller.
//!
//! [`testenv`] runs a real control plane (etcd, kube-apiserver, Cluster API with in-memory
//! machines) from binaries built by `tests/e2e/testenv/build.sh`; [`harness`] brings it up once
//! per test run and hands tests a client; [`capi`] builds CAPI objects and checks rollouts by
//! CAPI's own criteria; [`site`] and [`engine`] are the fixtures the suites share (built on
//! [`harness::TestNamespace`], cleaned up on drop) and [`assert`] their shared assertions;
//! [`chart`] renders and installs the Helm chart, and [`image`] runs the container image as the
//! kubelet would run the chart's pod.
//! [`scrape`] records a controller's `/metrics` during a run and [`describe`] reads
//! `kubectl describe`'s Events, for the observability checks.

pub mod assert;
pub mod audit;
pub mod capi;
pub mod chart;
pub mod cvo;
pub mod dcs;
pub mod describe;
pub mod engine;
pub mod fixture;
pub mod flux;
pub mod gitops;
pub mod guard;
pub mod harness;
pub mod image;
pub mod kind;
pub mod kube_ovn;
pub mod platform;
pub mod project;
pub mod scenario;
pub mod scrape;
pub mod site;
pub mod testenv;
