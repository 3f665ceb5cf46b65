//! Huawei DCS: `DCSMachineTemplate`, image in `spec.template.spec.vmTemplateName` (a VM template
//! registered in DCS under the exact name of the matrix row; DOMAIN.md §4).

use serde_json::{Value, json};

use crate::{ImageKey, Provider, ProviderError, set_at};

const IMAGE_PATH: [&str; 4] = ["spec", "template", "spec", "vmTemplateName"];

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
    fn set_image(&self, template: &mut Value, image: &str) -> Result<(), ProviderError> {
        set_at(template, &IMAGE_PATH, json!(image))
    }
    fn image_of(&self, template: &Value) -> Option<String> {
        template["spec"]["template"]["spec"]["vmTemplateName"]
            .as_str()
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clone_template;
    use crate::testutil::{assert_clean_clone, owner, yaml};

    #[test]
    fn clone_gets_the_hop_image_and_drops_per_machine_fields() {
        let source = yaml(include_str!("fixtures/dcs-machine-template.yaml"));
        assert_eq!(
            Dcs.image_of(&source).as_deref(),
            Some("acp-4.1.6-kube-v1.32.11-2")
        );
        let clone = clone_template(
            &Dcs,
            &source,
            "v1.33.7-4",
            "acp-4.2.5-kube-v1.33.7-4",
            owner(),
        )
        .unwrap();
        assert_clean_clone(&clone, &source);
        assert_eq!(
            clone["spec"]["template"]["spec"]["vmTemplateName"],
            "acp-4.2.5-kube-v1.33.7-4"
        );
        assert_eq!(
            Dcs.image_of(&clone).as_deref(),
            Some("acp-4.2.5-kube-v1.33.7-4")
        );
        for field in Dcs.per_machine_fields() {
            assert!(
                clone["spec"]["template"]["spec"].get(*field).is_none(),
                "{field} copied"
            );
        }
        // Everything else of the machine shape is kept, e.g. the pool the machines draw from.
        let mut expected = source["spec"].clone();
        for field in Dcs.per_machine_fields() {
            expected["template"]["spec"]
                .as_object_mut()
                .unwrap()
                .remove(*field);
        }
        expected["template"]["spec"]["vmTemplateName"] = json!("acp-4.2.5-kube-v1.33.7-4");
        assert_eq!(clone["spec"], expected);
        assert_eq!(clone["metadata"]["labels"], source["metadata"]["labels"]);
    }
}
