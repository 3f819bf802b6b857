{{/* Names and labels */}}
{{- define "openanomaly.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "openanomaly.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "openanomaly.selectorLabels" -}}
app.kubernetes.io/name: {{ include "openanomaly.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "openanomaly.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "openanomaly.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: openanomaly
{{- end -}}

{{- define "openanomaly.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "openanomaly.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "openanomaly.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "openanomaly.secretName" -}}
{{- default (include "openanomaly.fullname" .) .Values.secret.existingSecret -}}
{{- end -}}

{{- define "openanomaly.rulesConfigMap" -}}
{{- default (printf "%s-rules" (include "openanomaly.fullname" .)) .Values.rules.existingConfigMap -}}
{{- end -}}

{{/* The bundled services (tags.infrastructure): names of the subcharts' Services and Secrets */}}
{{- define "openanomaly.bundled" -}}
{{- if and .Values.tags .Values.tags.infrastructure -}}true{{- end -}}
{{- end -}}

{{- define "openanomaly.redisName" -}}
{{- printf "%s-redis" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "openanomaly.minioName" -}}
{{- printf "%s-minio" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "openanomaly.celeryBroker" -}}
{{- if .Values.celery.broker -}}
{{- .Values.celery.broker -}}
{{- else if include "openanomaly.bundled" . -}}
{{- printf "redis://:$(REDIS_PASSWORD)@%s:%d/0" (include "openanomaly.redisName" .) (int .Values.redis.port) -}}
{{- end -}}
{{- end -}}

{{- define "openanomaly.s3Endpoint" -}}
{{- if .Values.artifacts.s3.endpoint -}}
{{- .Values.artifacts.s3.endpoint -}}
{{- else if include "openanomaly.bundled" . -}}
{{- printf "http://%s:%d" (include "openanomaly.minioName" .) (int .Values.minio.port) -}}
{{- end -}}
{{- end -}}

{{- define "openanomaly.s3Bucket" -}}
{{- if .Values.artifacts.s3.bucket -}}
{{- .Values.artifacts.s3.bucket -}}
{{- else if include "openanomaly.bundled" . -}}
{{- .Values.minio.bucket -}}
{{- end -}}
{{- end -}}

{{/* Refuse settings that cannot work, with a message that says what to set */}}
{{- define "openanomaly.validate" -}}
{{- if not (has .Values.dispatcher (list "local" "celery" "dask")) -}}
{{- fail (printf "dispatcher must be local, celery or dask, not %q" .Values.dispatcher) -}}
{{- end -}}
{{- if and (eq .Values.dispatcher "dask") (not .Values.dask.scheduler) -}}
{{- fail "dispatcher dask needs dask.scheduler: the address of your Dask cluster's scheduler, tcp://HOST:8786" -}}
{{- end -}}
{{- if not (has .Values.artifacts.store (list "local" "s3" "noop")) -}}
{{- fail (printf "artifacts.store must be local, s3 or noop, not %q" .Values.artifacts.store) -}}
{{- end -}}
{{- if eq .Values.dispatcher "celery" -}}
{{- if not (include "openanomaly.celeryBroker" .) -}}
{{- fail "dispatcher celery needs a broker: set celery.broker (redis://..., amqp://...) or tags.infrastructure=true for the bundled Redis" -}}
{{- end -}}
{{- if ne .Values.artifacts.store "s3" -}}
{{- fail "dispatcher celery needs artifacts.store s3: the workers and the daemon exchange models through the store" -}}
{{- end -}}
{{- end -}}
{{- if and (eq .Values.artifacts.store "s3") (not (include "openanomaly.s3Bucket" .)) -}}
{{- fail "artifacts.store s3 needs artifacts.s3.bucket (or tags.infrastructure=true for the bundled MinIO)" -}}
{{- end -}}
{{- if lt (int .Values.shards) 1 -}}
{{- fail (printf "shards must be 1 or more, not %v" .Values.shards) -}}
{{- end -}}
{{- if gt (int .Values.shards) 1 -}}
{{- if .Values.persistence.existingClaim -}}
{{- fail "shards > 1 cannot share persistence.existingClaim: each shard gets a claim of its own" -}}
{{- end -}}
{{- end -}}
{{- if and (ne .Values.output.mode "metrics") (not .Values.output.remoteWriteUrls) -}}
{{- fail (printf "output.mode %s needs output.remoteWriteUrls" .Values.output.mode) -}}
{{- end -}}
{{- end -}}

{{/* Environment shared by every role: the same OA_* variables as `oa-exporter run` reads */}}
{{- define "openanomaly.env" -}}
{{- $bundled := include "openanomaly.bundled" . -}}
{{- if and $bundled (eq .Values.dispatcher "celery") (not .Values.celery.broker) }}
- name: REDIS_PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ include "openanomaly.redisName" . }}, key: redis-password}
{{- end }}
- name: OA_PROMETHEUS_URL
  value: {{ .Values.prometheusUrl | quote }}
- name: OA_LOG_LEVEL
  value: {{ .Values.log.level | quote }}
- name: OA_LOG_FORMAT
  value: {{ .Values.log.format | quote }}
{{- with .Values.modelEngine }}
- name: OA_MODEL_ENGINE
  value: {{ . | quote }}
{{- end }}
- name: OA_DISPATCHER
  value: {{ .Values.dispatcher | quote }}
{{- if eq .Values.dispatcher "celery" }}
- name: OA_CELERY_BROKER
  value: {{ include "openanomaly.celeryBroker" . | quote }}
{{- with .Values.celery.resultBackend }}
- name: OA_CELERY_RESULT_BACKEND
  value: {{ . | quote }}
{{- end }}
{{- else if eq .Values.dispatcher "dask" }}
- name: OA_DASK_SCHEDULER
  value: {{ .Values.dask.scheduler | quote }}
{{- else if .Values.poolWorkers }}
- name: OA_POOL_WORKERS
  value: {{ .Values.poolWorkers | quote }}
{{- end }}
- name: OA_ARTIFACT_STORE
  value: {{ .Values.artifacts.store | quote }}
- name: OA_ARTIFACT_KEEP
  value: {{ .Values.artifacts.keep | quote }}
- name: OA_ARTIFACT_DIR
  value: /var/lib/oa-exporter/models
- name: OA_ARTIFACT_KEY_FILE
  value: /etc/oa-exporter/secret/artifact-key
{{- if eq .Values.artifacts.store "s3" }}
{{- with include "openanomaly.s3Endpoint" . }}
- name: OA_S3_ENDPOINT
  value: {{ . | quote }}
{{- end }}
- name: OA_S3_BUCKET
  value: {{ include "openanomaly.s3Bucket" . | quote }}
{{- with .Values.artifacts.s3.prefix }}
- name: OA_S3_PREFIX
  value: {{ . | quote }}
{{- end }}
{{- $region := .Values.artifacts.s3.region }}
{{- if and (not $region) $bundled }}{{ $region = "us-east-1" }}{{ end }}
{{- with $region }}
- name: OA_S3_REGION
  value: {{ . | quote }}
{{- end }}
{{- if or .Values.secret.existingSecret .Values.secret.s3AccessKeyId }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "openanomaly.secretName" . }}, key: s3-access-key-id, optional: true}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "openanomaly.secretName" . }}, key: s3-secret-access-key, optional: true}
{{- else if $bundled }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef: {name: {{ include "openanomaly.minioName" . }}, key: root-user}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef: {name: {{ include "openanomaly.minioName" . }}, key: root-password}
{{- end }}
{{- end }}
- name: OA_REMOTE_WRITE_QUEUE_DIR
  value: /var/lib/oa-exporter/remote-write
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes every role mounts: the signing key, a writable /tmp */}}
{{- define "openanomaly.secretVolume" -}}
- name: secret
  secret:
    secretName: {{ include "openanomaly.secretName" . }}
    items: [{key: artifact-key, path: artifact-key}]
    defaultMode: 0440
- name: tmp
  emptyDir: {}
{{- end -}}

{{- define "openanomaly.secretMounts" -}}
- name: secret
  mountPath: /etc/oa-exporter/secret
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* prometheusRule.ruleAlerts: the group `oa-exporter rules alerts` writes for the chart's rules files (core/alerting_rules.py) */}}
{{- define "openanomaly.ruleAlerts" -}}
{{- if .Values.rules.existingConfigMap }}
{{- fail "prometheusRule.ruleAlerts writes alerts for the chart's own rules (rules.files, rules.examples), not for rules.existingConfigMap: write those with `oa-exporter rules alerts` into a PrometheusRule of your own" }}
{{- end }}
{{- $texts := list }}
{{- range $file := .Values.rules.examples }}
{{- $texts = append $texts (dict "name" $file "text" ($.Files.Get (printf "files/rules/%s" $file))) }}
{{- end }}
{{- range $file, $text := .Values.rules.files }}
{{- $texts = append $texts (dict "name" $file "text" $text) }}
{{- end }}
{{- $alerts := list }}
{{- range $source := $texts }}
{{- $document := fromYaml $source.text }}
{{- if hasKey $document "Error" }}
{{- fail (printf "rules file %s is not valid YAML: %s" $source.name $document.Error) }}
{{- end }}
{{- range $group := $document.groups }}
{{- range $rule := $group.rules }}
{{- $wait := toString $.Values.prometheusRule.ruleAlertsFor }}
{{- if hasKey $rule "for" }}{{ $wait = toString (get $rule "for") }}{{ end }}
{{- $held := "" }}
{{- if not (has $wait (list "0" "off" "")) }}{{ $held = printf " for %s" $wait }}{{ end }}
{{- $alert := dict "alert" "AnomalyDetected" "expr" (printf "label_replace(oa_anomaly_score{rule=\"%s\"} > 1, \"severity\", \"warning\", \"severity\", \"\")" $rule.anomaly) }}
{{- if $held }}{{ $_ := set $alert "for" $wait }}{{ end }}
{{- $labels := dict "rule" $rule.anomaly }}
{{- range $name, $value := $rule.labels }}{{ $_ := set $labels $name (toString $value) }}{{ end }}
{{- $annotations := dict "summary" (printf "Anomaly in %s: value outside its forecast band" $rule.anomaly) "description" (printf "The series has scored {{ printf \"%%.2f\" $value }} (1 = the edge of the band)%s. Compare oa_y with oa_yhat_lower and oa_yhat_upper on the \"OpenAnomaly / Rule detail\" dashboard." $held) }}
{{- range $name, $value := $rule.annotations }}{{ $_ := set $annotations $name (toString $value) }}{{ end }}
{{- $_ := set $alert "labels" $labels }}
{{- $_ := set $alert "annotations" $annotations }}
{{- $alerts = append $alerts $alert }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml (dict "name" "openanomaly-rules" "rules" $alerts) }}
{{- end -}}
