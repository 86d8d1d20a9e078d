{{/* Names, labels, and the rules every template relies on. */}}

{{- define "ncps.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ncps.fullname" -}}
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

{{- define "ncps.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ncps.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ncps.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "ncps.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "ncps.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ncps.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "ncps.image" -}}
{{- $registry := .Values.global.imageRegistry | default .Values.image.registry -}}
{{- printf "%s/%s:%s" $registry .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* Refuses combinations that would lose data: replicas need a shared database, shared
storage, shared locks and one signing key. */}}
{{- define "ncps.validate" -}}
{{- $c := .Values.config -}}
{{- if not (has $c.database.type (list "sqlite" "postgresql" "mysql")) -}}
{{- fail (printf "config.database.type must be sqlite, postgresql or mysql, not %q" $c.database.type) -}}
{{- end -}}
{{- if not (has $c.storage.type (list "local" "s3")) -}}
{{- fail (printf "config.storage.type must be local or s3, not %q" $c.storage.type) -}}
{{- end -}}
{{- if not (has .Values.mode (list "statefulset" "deployment")) -}}
{{- fail (printf "mode must be statefulset or deployment, not %q" .Values.mode) -}}
{{- end -}}
{{- if and (eq $c.storage.type "s3") (not $c.storage.s3.bucket) -}}
{{- fail "config.storage.s3.bucket is required with config.storage.type s3" -}}
{{- end -}}
{{- if and (eq $c.lock.backend "redis") (not $c.redis.enabled) -}}
{{- fail "config.lock.backend redis needs config.redis.enabled and its addresses" -}}
{{- end -}}
{{- if and .Values.migration.enabled (eq .Values.migration.mode "job") (eq $c.database.type "sqlite") -}}
{{- fail "migration.mode job needs a database server: a Job cannot reach the SQLite file in the pod's volume (use initContainer)" -}}
{{- end -}}
{{- if gt (int .Values.replicaCount) 1 -}}
{{- if eq $c.database.type "sqlite" -}}
{{- fail "replicaCount > 1 needs config.database.type postgresql or mysql: a SQLite file belongs to one pod" -}}
{{- end -}}
{{- if eq $c.storage.type "local" -}}
{{- fail "replicaCount > 1 needs config.storage.type s3: replicas must share their NARs" -}}
{{- end -}}
{{- if eq $c.lock.backend "local" -}}
{{- fail "replicaCount > 1 needs config.lock.backend redis or postgres: local locks do not reach the other replicas" -}}
{{- end -}}
{{- if and $c.signing.enabled (not (or $c.signing.secretKey $c.signing.existingSecret)) -}}
{{- fail "replicaCount > 1 needs config.signing.secretKey or config.signing.existingSecret: every replica must sign with the same key" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding what the chart was given in clear (created when anything is). */}}
{{- define "ncps.secretName" -}}
{{- include "ncps.fullname" . -}}
{{- end -}}

{{- define "ncps.databaseURL" -}}
{{- $d := .Values.config.database -}}
{{- if eq $d.type "postgresql" -}}
{{- $p := $d.postgresql -}}
{{- printf "postgres://%s:%s@%s:%d/%s?sslmode=%s%s" (urlquery $p.username) (urlquery $p.password) $p.host (int $p.port) $p.database $p.sslMode (ternary (printf "&%s" $p.extraParams) "" (ne $p.extraParams "")) -}}
{{- else if eq $d.type "mysql" -}}
{{- $m := $d.mysql -}}
{{- printf "mysql://%s:%s@%s:%d/%s%s" (urlquery $m.username) (urlquery $m.password) $m.host (int $m.port) $m.database (ternary (printf "?%s" $m.extraParams) "" (ne $m.extraParams "")) -}}
{{- end -}}
{{- end -}}

{{/* An env entry read from a Secret key. */}}
{{- define "ncps.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{/* Environment of every ncps container: the secrets (never in the ConfigMap). */}}
{{- define "ncps.env" -}}
{{- $c := .Values.config -}}
{{- $own := include "ncps.secretName" . -}}
{{- if eq $c.database.type "sqlite" }}
- name: CACHE_DATABASE_URL
  value: {{ printf "sqlite:%s" $c.database.sqlite.path | quote }}
{{- else }}
{{- $existing := ternary $c.database.postgresql.existingSecret $c.database.mysql.existingSecret (eq $c.database.type "postgresql") }}
{{ include "ncps.secretEnv" (dict "name" "CACHE_DATABASE_URL" "secret" (default $own $existing) "key" "database-url") }}
{{- end }}
{{- if eq $c.storage.type "s3" }}
{{ include "ncps.secretEnv" (dict "name" "CACHE_STORAGE_S3_ACCESS_KEY_ID" "secret" (default $own $c.storage.s3.existingSecret) "key" "access-key-id") }}
{{ include "ncps.secretEnv" (dict "name" "CACHE_STORAGE_S3_SECRET_ACCESS_KEY" "secret" (default $own $c.storage.s3.existingSecret) "key" "secret-access-key") }}
{{- end }}
{{- if and $c.redis.enabled (or $c.redis.password $c.redis.existingSecret) }}
{{ include "ncps.secretEnv" (dict "name" "CACHE_REDIS_PASSWORD" "secret" (default $own $c.redis.existingSecret) "key" "redis-password") }}
{{- end }}
{{- if or $c.permissions.getToken $c.permissions.getTokenExistingSecret }}
{{ include "ncps.secretEnv" (dict "name" "CACHE_GET_TOKEN" "secret" (default $own $c.permissions.getTokenExistingSecret) "key" "get-token") }}
{{- end }}
{{- if or $c.permissions.putToken $c.permissions.putTokenExistingSecret }}
{{ include "ncps.secretEnv" (dict "name" "CACHE_PUT_TOKEN" "secret" (default $own $c.permissions.putTokenExistingSecret) "key" "put-token") }}
{{- end }}
{{- with .Values.extraEnvVars }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volume mounts of every ncps container. */}}
{{- define "ncps.volumeMounts" -}}
- name: config
  mountPath: /etc/ncps
  readOnly: true
- name: storage
  mountPath: {{ .Values.config.storage.local.path }}
- name: temp
  mountPath: {{ .Values.config.cache.tempPath }}
{{- if or .Values.config.signing.secretKey .Values.config.signing.existingSecret }}
- name: signing-key
  mountPath: /etc/ncps-key
  readOnly: true
{{- end }}
{{- if .Values.config.upstream.existingNetrcSecret }}
- name: netrc
  mountPath: /etc/ncps-netrc
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* The container running `ncps` with the chart's configuration and `args`. */}}
{{- define "ncps.container" -}}
- name: {{ .name }}
  image: {{ include "ncps.image" .root }}
  imagePullPolicy: {{ .root.Values.image.pullPolicy }}
  args:
    - --config
    - /etc/ncps/config.yaml
    {{- range .args }}
    - {{ . }}
    {{- end }}
  env:
    {{- include "ncps.env" .root | nindent 4 }}
  volumeMounts:
    {{- include "ncps.volumeMounts" .root | nindent 4 }}
  {{- with .root.Values.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
