//! CAPD, for the end-to-end tests: `DevMachineTemplate` and `DockerMachineTemplate`.
//!
//! The docker backend takes its node image from `customImage`
//! (`spec.template.spec.customImage` for DockerMachineTemplate,
//! `spec.template.spec.backend.docker.customImage` for DevMachineTemplate). The in-memory
//! backend has no image at all, so there the hop's image is only recorded in the clone's
//! `upgrade.cpaas.io/os-image` annotation, which tests read back.
//!
//! No slot pools, and no image to stage: the in-memory backend boots nothing, and the docker
//! backend pulls its node image when it creates the container.

use serde_json::{Value, json};

use crate::{ImageKey, ImageLookup, OS_IMAGE_ANNOTATION, Provider, ProviderError, set_at};

#[derive(Debug, Default)]
pub struct Capd;

fn image_path(template: &Value) -> Option<&'static [&'static str]> {
    let spec = &template["spec"]["template"]["spec"];
    match template["kind"].as_str() {
        Some("DockerMachineTemplate") => Some(&["spec", "template", "spec", "customImage"]),
        Some("DevMachineTemplate") if spec["backend"]["docker"].is_object() => Some(&[
            "spec",
            "template",
            "spec",
            "backend",
            "docker",
            "customImage",
        ]),
        _ => None,
    }
}

impl Provider for Capd {
    fn name(&self) -> &'static str {
        "capd"
    }
    fn template_kinds(&self) -> &'static [&'static str] {
        &["DevMachineTemplate", "DockerMachineTemplate"]
    }
    fn image_key(&self) -> ImageKey {
        ImageKey::Default
    }
    fn set_image(&self, template: &mut Value, image: &str) -> Result<(), ProviderError> {
        match image_path(template) {
            Some(path) => set_at(template, path, json!(image)),
            // In-memory backend: the annotation written by clone_template is the record.
            None => Ok(()),
        }
    }
    fn image_of(&self, template: &Value) -> Option<String> {
        let from_field = image_path(template).and_then(|path| {
            path.iter()
                .try_fold(template, |v, key| v.get(*key))
                .and_then(Value::as_str)
        });
        from_field
            .or_else(|| template["metadata"]["annotations"][OS_IMAGE_ANNOTATION].as_str())
            .map(str::to_string)
    }
    fn image_lookup(&self, _image: &str) -> ImageLookup {
        ImageLookup::NotNeeded {
            reason: "CAPD boots no OS image to stage (in-memory machines; the docker backend pulls its node image itself)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_clean_clone, owner, yaml};
    use crate::{KUBERNETES_VERSION_ANNOTATION, TEMPLATE_BASE_ANNOTATION, clone_template};

    const IN_MEMORY: &str = r#"
apiVersion: infrastructure.cluster.x-k8s.io/v1beta1
kind: DevMachineTemplate
metadata:
  name: demo-cp-v131
  namespace: demo
  uid: 0b5d3c4e-1111-4222-8333-944455556666
  resourceVersion: "4242"
  generation: 1
  creationTimestamp: "2026-11-21T10:00:00Z"
  managedFields:
    - manager: kubectl
      operation: Update
spec:
  template:
    spec:
      backend:
        inMemory:
          vm:
            provisioning:
              startupDuration: 3s
"#;

    #[test]
    fn in_memory_clone_records_the_image_in_an_annotation() {
        let source = yaml(IN_MEMORY);
        let clone = clone_template(
            &Capd,
            &source,
            "v1.32.11-2",
            "acp-4.1.6-kube-v1.32.11-2",
            owner(),
        )
        .unwrap();
        assert_clean_clone(&clone, &source);
        assert_eq!(
            clone["spec"], source["spec"],
            "the in-memory spec is copied unchanged"
        );
        assert_eq!(
            Capd.image_of(&clone).as_deref(),
            Some("acp-4.1.6-kube-v1.32.11-2")
        );
        let ann = &clone["metadata"]["annotations"];
        assert_eq!(ann[TEMPLATE_BASE_ANNOTATION], "demo-cp-v131");
        assert_eq!(ann[KUBERNETES_VERSION_ANNOTATION], "v1.32.11-2");

        // A clone of the clone keeps the line's base name instead of growing it.
        let again = clone_template(
            &Capd,
            &clone,
            "v1.33.7-4",
            "acp-4.2.5-kube-v1.33.7-4",
            owner(),
        )
        .unwrap();
        let name = again["metadata"]["name"].as_str().unwrap();
        assert!(name.starts_with("demo-cp-v131-v1-33-7-4-"), "{name}");
    }

    #[test]
    fn no_slots_and_nothing_to_stage() {
        let tpl = yaml(IN_MEMORY);
        assert_eq!(Capd.slot_pool(&tpl), None);
        assert_eq!(Capd.slot_holder_kind(), None);
        assert_eq!(
            Capd.free_slots(&tpl, &[]).unwrap_err(),
            ProviderError::NoSlotPool("capd")
        );
        assert!(matches!(
            Capd.image_lookup("anything"),
            ImageLookup::NotNeeded { .. }
        ));
    }

    #[test]
    fn docker_backends_get_the_image_in_custom_image() {
        let mut source = yaml(IN_MEMORY);
        source["spec"]["template"]["spec"]["backend"] = json!({"docker": {"extraMounts": []}});
        let clone =
            clone_template(&Capd, &source, "v1.32.7", "kindest/node:v1.32.7", owner()).unwrap();
        assert_eq!(
            clone["spec"]["template"]["spec"]["backend"]["docker"]["customImage"],
            "kindest/node:v1.32.7"
        );

        let mut docker = yaml(IN_MEMORY);
        docker["kind"] = json!("DockerMachineTemplate");
        docker["spec"]["template"]["spec"] = json!({"extraMounts": []});
        let clone =
            clone_template(&Capd, &docker, "v1.32.7", "kindest/node:v1.32.7", owner()).unwrap();
        assert_eq!(
            clone["spec"]["template"]["spec"]["customImage"],
            "kindest/node:v1.32.7"
        );
    }
}
