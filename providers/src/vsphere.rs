//! VMware vSphere: `VSphereMachineTemplate`, image in `spec.template.spec.template` (the VM
//! template to clone; DOMAIN.md §4). vSphere's webhook rejects edits of a template's spec, so
//! a hop always creates a new template (§3).

use crate::{ImageKey, Provider};

#[derive(Debug, Default)]
pub struct Vsphere;

impl Provider for Vsphere {
    fn name(&self) -> &'static str {
        "vsphere"
    }
    fn template_kinds(&self) -> &'static [&'static str] {
        &["VSphereMachineTemplate"]
    }
    fn image_key(&self) -> ImageKey {
        ImageKey::Vsphere
    }
    fn image_field(&self) -> Option<&'static str> {
        Some("template")
    }
}
