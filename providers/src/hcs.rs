//! Huawei Cloud Stack: `HCSMachineTemplate`, image in `spec.template.spec.imageName`
//! (DOMAIN.md §4). A clone also drops `serverId`, which names one ECS instance (§3).

use crate::{ImageKey, Provider};

#[derive(Debug, Default)]
pub struct Hcs;

impl Provider for Hcs {
    fn name(&self) -> &'static str {
        "hcs"
    }
    fn template_kinds(&self) -> &'static [&'static str] {
        &["HCSMachineTemplate"]
    }
    fn image_key(&self) -> ImageKey {
        ImageKey::Hcs
    }
    fn image_field(&self) -> Option<&'static str> {
        Some("imageName")
    }
    fn per_machine_fields(&self) -> &'static [&'static str] {
        &["providerID", "serverId"]
    }
}
