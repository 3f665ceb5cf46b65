{{- /*
The controller's RBAC rules, by where they apply. clusterrole.yaml grants them all cluster-wide
(rbac.scope=Cluster) or only the cluster-scoped ones (rbac.scope=Namespace, where roles.yaml
grants each namespaced group in the namespaces that group is used in). One definition of each
rule, so the two scopes cannot drift apart. README "Install" lists what each namespace gets.
*/ -}}

{{/* The namespace of the platform's image ConfigMaps: providers::PLATFORM_NAMESPACE, fixed in
the controller (tests/e2e/tests/rbac_scope.rs checks they agree). */}}
{{- define "upgrade-controller.platformNamespace" -}}
cpaas-system
{{- end -}}

{{/* Cluster-scoped: what no Role can grant. */}}
{{- define "upgrade-controller.rules.cluster" -}}
# OSSupportMatrices are cluster-scoped.
- apiGroups: [upgrade.cpaas.io]
  resources: [ossupportmatrices]
  verbs: [get, list, watch]
# API discovery for v1beta2 references and optional kinds (group only).
- nonResourceURLs: [/api, /api/*, /apis, /apis/*]
  verbs: [get]
{{- end -}}

{{/* The requests' namespace (watchNamespace): the requests and the CAPI objects of their
Clusters, all in the Cluster's own namespace. */}}
{{- define "upgrade-controller.rules.requests" -}}
# Its own API: requests (the finalizer is added and removed by patch; status is written by
# server-side apply).
- apiGroups: [upgrade.cpaas.io]
  resources: [upgraderequests]
  verbs: [get, list, watch, patch]
- apiGroups: [upgrade.cpaas.io]
  resources: [upgraderequests/status]
  verbs: [patch]
# CAPI: watched into the controller's caches; KubeadmControlPlane and MachineDeployments patched
# by server-side apply (version, tags, template references); the Cluster gets the Kube-OVN
# chart annotation before each hop, and one annotation when a request is deleted before it
# finished.
- apiGroups: [cluster.x-k8s.io]
  resources: [clusters]
  verbs: [get, list, watch, patch]
- apiGroups: [cluster.x-k8s.io]
  resources: [machines]
  verbs: [list, watch]
- apiGroups: [cluster.x-k8s.io]
  resources: [machinepools]
  verbs: [list, watch]
- apiGroups: [cluster.x-k8s.io]
  resources: [machinedeployments]
  verbs: [get, list, watch, patch]
- apiGroups: [controlplane.cluster.x-k8s.io]
  resources: [kubeadmcontrolplanes]
  verbs: [get, list, watch, patch]
# Template clones for each hop (templates are never edited in place); the webhook and the
# preflight read them too.
- apiGroups: [bootstrap.cluster.x-k8s.io]
  resources: [kubeadmconfigtemplates]
  verbs: [get, create]
- apiGroups: [infrastructure.cluster.x-k8s.io]
  resources: [dcsmachinetemplates, hcsmachinetemplates, vspheremachinetemplates, devmachinetemplates, dockermachinetemplates]
  verbs: [get, create]
# Bare metal keeps its template across hops: read only.
- apiGroups: [infrastructure.cluster.x-k8s.io]
  resources: [baremetalmachinetemplates]
  verbs: [get]
# Preflight: slot pools and the machines holding their entries (watched into caches; a pool
# outside the template's namespace is refused, never read).
- apiGroups: [infrastructure.cluster.x-k8s.io]
  resources: [dcsiphostnamepools, hcsmachineconfigpools, vspheremachineconfigpools]
  verbs: [get, list, watch]
- apiGroups: [infrastructure.cluster.x-k8s.io]
  resources: [dcsmachines]
  verbs: [list, watch]
# Kube-OVN (DOMAIN.md §3): a Cluster's own infrastructure cluster, for spec.networkType.
- apiGroups: [infrastructure.cluster.x-k8s.io]
  resources: [dcsclusters, hcsclusters, baremetalclusters]
  verbs: [get]
# CAPI's workload kubeconfig Secrets `<cluster>-kubeconfig` (reachability, ResourcePatches,
# the workload's Kube-OVN AppRelease; read as data, never as code).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
# Events on UpgradeRequests and Clusters (`kubectl describe`).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* The requests' namespace and each of gitops.namespaces: the GitOpsSafe preflight's rule
sets (Flux Kustomization spec.ignore, Argo CD Application ignoreDifferences). */}}
{{- define "upgrade-controller.rules.gitops" -}}
# Preflight GitOpsSafe: the rule sets of the GitOps tools that apply a cluster.
- apiGroups: [kustomize.toolkit.fluxcd.io]
  resources: [kustomizations]
  verbs: [get]
- apiGroups: [argoproj.io]
  resources: [applications]
  verbs: [get]
{{- end -}}

{{/* cvsh.namespace: Phase 1 and the platform's preflight. */}}
{{- define "upgrade-controller.rules.cvsh" -}}
# The Cluster Version Operator's ClusterVersionShadows, the global cluster's among them
# (spec.desiredUpdate is the only field written).
- apiGroups: [{{ include "upgrade-controller.cvshGroup" . | quote }}]
  resources: [clusterversionshadows]
  verbs: [get, list, watch, patch]
# Preflight ProviderReady: the infrastructure provider's AppRelease.
- apiGroups: [operator.alauda.io]
  resources: [appreleases]
  verbs: [list]
{{- end -}}

{{/* The platform namespace: the image ConfigMaps the preflight finds OS images by. */}}
{{- define "upgrade-controller.rules.platform" -}}
# DCS and HCS images by label (watched), the bare-metal image catalog by name.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch]
{{- end -}}

{{/* rbac.scope=Namespace: namespace -> the rule groups granted there, as JSON. Groups
needed in the same namespace share one Role. */}}
{{- define "upgrade-controller.roleNamespaces" -}}
{{- $wants := list (list .Values.watchNamespace "requests") (list .Values.watchNamespace "gitops") (list .Values.cvsh.namespace "cvsh") (list (include "upgrade-controller.platformNamespace" .) "platform") -}}
{{- range .Values.gitops.namespaces -}}
{{- $wants = append $wants (list . "gitops") -}}
{{- end -}}
{{- $roles := dict -}}
{{- range $w := $wants -}}
{{- $ns := index $w 0 -}}
{{- $group := index $w 1 -}}
{{- $groups := default (list) (get $roles $ns) -}}
{{- if not (has $group $groups) -}}
{{- $_ := set $roles $ns (append $groups $group) -}}
{{- end -}}
{{- end -}}
{{- toJson $roles -}}
{{- end -}}

{{/* Refuses an rbac.scope the chart does not know, and Namespace without watchNamespace. */}}
{{- define "upgrade-controller.rbacScope" -}}
{{- $scope := .Values.rbac.scope -}}
{{- if not (has $scope (list "Cluster" "Namespace")) -}}
{{- fail (printf "rbac.scope %q must be Cluster or Namespace" $scope) -}}
{{- end -}}
{{- if and (eq $scope "Namespace") (not .Values.watchNamespace) -}}
{{- fail "rbac.scope=Namespace needs watchNamespace: the controller watches every namespace when watchNamespace is empty, which only a ClusterRole can grant (set watchNamespace, or rbac.scope=Cluster)" -}}
{{- end -}}
{{- $scope -}}
{{- end -}}
