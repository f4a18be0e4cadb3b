{{/*
The chart's name: the app.kubernetes.io/name label.
*/}}
{{- define "studbook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object's name. The release's name unless fullnameOverride: the objects are
<release>-operator, <release>-webhook, ..., the names docs/operator.md gives. Kept at 48
characters so that the longest suffix (-webhook-tls) still fits a 63-character name.
*/}}
{{- define "studbook.fullname" -}}
{{- default .Release.Name .Values.fullnameOverride | trunc 48 | trimSuffix "-" }}
{{- end }}

{{- define "studbook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
What selects the operator's pods; fixed for a release (a Deployment's selector is immutable).
The instance label keeps two releases in one namespace from selecting each other's pods.
*/}}
{{- define "studbook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "studbook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The labels of every object the chart renders; pass a dict with "root" (the top context) and
"component".
*/}}
{{- define "studbook.labels" -}}
helm.sh/chart: {{ include "studbook.chart" .root }}
app.kubernetes.io/name: {{ include "studbook.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: studbook
{{- with .root.Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end }}

{{/*
The operator's ServiceAccount: the chart's, or one that exists already.
*/}}
{{- define "studbook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (printf "%s-operator" (include "studbook.fullname" .)) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The webhook's TLS Secret: the user's, or the one the chart generates or has cert-manager issue.
*/}}
{{- define "studbook.webhookTlsSecret" -}}
{{- default (printf "%s-webhook-tls" (include "studbook.fullname" .)) .Values.webhook.tlsSecret }}
{{- end }}
