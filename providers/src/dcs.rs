//! Huawei DCS: `DCSMachineTemplate`, image in `spec.template.spec.vmTemplateName` (a VM template
//! registered in DCS under the exact name of the matrix row; DOMAIN.md §4).

use crate::{ImageKey, Provider};

#[derive(Debug, Default)]
pub struct Dcs;

impl Provider for Dcs {
    fn name(&self) -> &'static str {
        "dcs"
    }
    fn template_kinds(&self) -> &'static [&'static str] {
        &["DCSMachineTemplate"]
    }
    fn image_key(&self) -> ImageKey {
        ImageKey::Dcs
    }
    fn image_field(&self) -> Option<&'static str> {
        Some("vmTemplateName")
    }
}
