{{- define "upgrade-controller.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "upgrade-controller.labels" -}}
app.kubernetes.io/name: upgrade-controller
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The cvsh API group, from cvsh.apiVersion (GROUP/VERSION). */}}
{{- define "upgrade-controller.cvshGroup" -}}
{{- $parts := splitList "/" .Values.cvsh.apiVersion -}}
{{- if ne (len $parts) 2 -}}
{{- fail (printf "cvsh.apiVersion %q must be GROUP/VERSION, e.g. cvo.cpaas.io/v1alpha1" .Values.cvsh.apiVersion) -}}
{{- end -}}
{{- first $parts -}}
{{- end -}}
