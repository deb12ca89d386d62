{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "jwtkeymap.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object name prefix: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "jwtkeymap.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A suffixed name that stays within 63 characters. */}}
{{- define "jwtkeymap.component" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "jwtkeymap.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{- define "jwtkeymap.selectorLabels" -}}
app.kubernetes.io/name: {{ include "jwtkeymap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "jwtkeymap.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "jwtkeymap.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: jwtkeymap
{{- end }}

{{- define "jwtkeymap.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "jwtkeymap.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The one image, by digest when given. */}}
{{- define "jwtkeymap.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "jwtkeymap.webhookService" -}}
{{- include "jwtkeymap.component" (list . "webhook") }}
{{- end }}

{{- define "jwtkeymap.tlsSecret" -}}
{{- include "jwtkeymap.component" (list . "webhook-tls") }}
{{- end }}

{{- define "jwtkeymap.certificate" -}}
{{- include "jwtkeymap.component" (list . "webhook") }}
{{- end }}

{{/* kopf serves each admission handler on /<handler id>. */}}
{{- define "jwtkeymap.clientConfig" -}}
{{- $root := index . 0 }}
{{- $path := index . 1 }}
{{- $caBundle := index . 2 }}
{{- if $root.Values.webhook.url }}
url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.url) $path | quote }}
{{- else }}
service:
  name: {{ include "jwtkeymap.webhookService" $root }}
  namespace: {{ $root.Release.Namespace }}
  path: {{ $path }}
  port: 443
{{- end }}
{{- if $caBundle }}
caBundle: {{ $caBundle }}
{{- end }}
{{- end }}

{{- define "jwtkeymap.configDir" -}}/etc/jwtkeymap{{- end }}
