//! Infrastructure provider modules.
//!
//! Each supported infrastructure (Huawei DCS, Huawei Cloud Stack, VMware vSphere, and CAPD for
//! the end-to-end tests) gets one module behind one small trait: which machine template kind and
//! field carries the OS image, how a template is cloned for a hop, whether an image is staged,
//! and how much IP capacity a rollout needs (DOMAIN.md §4). The trait and modules land with the
//! upgrade engine (issue 3); this crate exists so the workspace layout is fixed from the start.
