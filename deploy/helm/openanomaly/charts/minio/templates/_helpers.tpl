{{- define "minio.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "minio.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "minio.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "minio.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openanomaly
{{- end -}}

{{- define "minio.securityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{- define "minio.credentialsEnv" -}}
- name: MINIO_ROOT_USER
  valueFrom:
    secretKeyRef: {name: {{ include "minio.fullname" . }}, key: root-user}
- name: MINIO_ROOT_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "minio.fullname" . }}, key: root-password}
{{- end -}}
