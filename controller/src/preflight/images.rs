//! OSImagesStaged: every remaining hop's OS image is registered under its exact name
//! (DOMAIN.md §1, §4).

use providers::ImageLookup;

use super::{Input, check, passed};
use crate::api::{CheckName, CheckState, PreflightCheck};

pub(super) fn images(i: &Input<'_>) -> PreflightCheck {
    let name = CheckName::OSImagesStaged;
    let acked = |img: &str| {
        i.spec
            .acknowledgements
            .images
            .iter()
            .any(|a| a == "*" || a == img)
    };
    let mut missing = Vec::new();
    let mut unverifiable = Vec::new();
    let mut ok = Vec::new();
    let (mut not_needed, mut why_not_needed) = (Vec::new(), "");
    for im in &i.obs.images {
        match &im.lookup {
            ImageLookup::NotNeeded { reason } => {
                not_needed.push(im.image.as_str());
                why_not_needed = reason.as_str();
            }
            ImageLookup::ConfigMap {
                namespace,
                label_selector,
                ..
            } => {
                if im.confirmed {
                    ok.push(format!("{}: registered", im.image));
                } else {
                    missing.push(format!(
                        "{} (no ConfigMap in {namespace} matches {label_selector})",
                        im.image
                    ));
                }
            }
            ImageLookup::ConfigMapKey {
                namespace,
                name,
                key,
            } => {
                if im.confirmed {
                    ok.push(format!("{}: in ConfigMap {namespace}/{name}", im.image));
                } else {
                    missing.push(format!(
                        "{} (ConfigMap {namespace}/{name} has no key {key}; the bare-metal provider re-renders it in Phase 1, or add the key as its upgrade guide says)",
                        im.image
                    ));
                }
            }
            ImageLookup::Unverifiable => {
                if acked(&im.image) {
                    ok.push(format!(
                        "{}: confirmed in spec.acknowledgements.images",
                        im.image
                    ));
                } else {
                    unverifiable.push(im.image.clone());
                }
            }
        }
    }
    if !missing.is_empty() {
        return check(
            name,
            CheckState::Failed,
            "ImageNotStaged",
            format!(
                "OS images not staged under their exact names: {}; upload and register each image under exactly that name",
                missing.join(", ")
            ),
        );
    }
    if !unverifiable.is_empty() {
        return check(
            name,
            CheckState::Unknown,
            "ImageUnverifiable",
            format!(
                "the platform's API cannot show whether these images are staged: {}; confirm each exists under exactly that name, then list them in spec.acknowledgements.images",
                unverifiable.join(", ")
            ),
        );
    }
    if !not_needed.is_empty() {
        ok.push(format!("{}: {why_not_needed}", not_needed.join(", ")));
    }
    passed(name, ok.join("; "))
}

#[cfg(test)]
mod tests {
    use crate::api::{CheckName, CheckState};
    use crate::preflight::ImageObs;
    use crate::preflight::test_support::*;
    use providers::ImageLookup;

    #[test]
    fn unverifiable_images_wait_for_an_acknowledgement() {
        let target = row("4.3.2", "v1.34.5-3", &[]);
        let mut obs = pobs();
        obs.images = vec![ImageObs {
            image: "tpl-4.3.2".into(),
            lookup: ImageLookup::Unverifiable,
            confirmed: false,
        }];
        let checks = run_all(&spec(&[]), &target, &cvsh("4.2.5"), &[], &obs);
        let c = &checks[&CheckName::OSImagesStaged];
        assert_eq!(c.state, CheckState::Unknown);
        assert!(c.message.contains("tpl-4.3.2"));
        let mut acked = spec(&[]);
        acked.acknowledgements.images = vec!["tpl-4.3.2".into()];
        let checks = run_all(&acked, &target, &cvsh("4.2.5"), &[], &obs);
        assert_eq!(checks[&CheckName::OSImagesStaged].state, CheckState::Passed);
    }
}
