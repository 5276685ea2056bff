{{- define "celery-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "celery-exporter.fullname" -}}
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

{{- define "celery-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "celery-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "celery-exporter.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "celery-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "celery-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "celery-exporter.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "celery-exporter.secretName" -}}
{{- if .Values.broker.existingSecret -}}
{{- .Values.broker.existingSecret -}}
{{- else -}}
{{- include "celery-exporter.fullname" . -}}
{{- end -}}
{{- end -}}

{{- /* The broker URL is passed when it comes from a Secret or from broker.url; with app.module
and neither, the exporter takes it from the app's configuration. */}}
{{- define "celery-exporter.brokerFromValues" -}}
{{- if or .Values.broker.existingSecret .Values.broker.url -}}true{{- end -}}
{{- end -}}

{{- /* "true" when the exporter serves HTTPS: every scheme (probes, ServiceMonitor) follows it. */}}
{{- define "celery-exporter.tls" -}}
{{- if .Values.webConfig.tls.enabled -}}true{{- end -}}
{{- end -}}

{{- define "celery-exporter.basicAuth" -}}
{{- if .Values.webConfig.basicAuth.enabled -}}true{{- end -}}
{{- end -}}

{{- /* "true" when a web config file is mounted and passed as --web-config-file. */}}
{{- define "celery-exporter.webConfig" -}}
{{- if or .Values.webConfig.existingSecret (include "celery-exporter.tls" .) (include "celery-exporter.basicAuth" .) -}}true{{- end -}}
{{- end -}}

{{- define "celery-exporter.webConfigSecretName" -}}
{{- .Values.webConfig.existingSecret | default (printf "%s-web-config" (include "celery-exporter.fullname" .)) -}}
{{- end -}}

{{- define "celery-exporter.webConfigFile" -}}
{{- printf "/etc/celery-exporter/web/%s" (ternary .Values.webConfig.existingSecretKey "web-config.yml" (ne .Values.webConfig.existingSecret "")) -}}
{{- end -}}

{{- /* A probe from values, its httpGet.scheme set from webConfig.tls.enabled. */}}
{{- define "celery-exporter.probe" -}}
{{- $probe := deepCopy .probe -}}
{{- if and (hasKey $probe "httpGet") .root.Values.webConfig.tls.clientCertificates -}}
{{- /* the kubelet cannot present a client certificate: the same request, from inside the container */ -}}
{{- $command := list "celery-exporter" "healthcheck" (printf "--port=%v" .root.Values.service.port) (printf "--web-config-file=%s" (include "celery-exporter.webConfigFile" .root)) (printf "--timeout=%vs" ($probe.timeoutSeconds | default 1)) -}}
{{- if eq (toString $probe.httpGet.path) "/-/ready" -}}
{{- $command = append $command "--ready" -}}
{{- end -}}
{{- $probe = omit $probe "httpGet" -}}
{{- $_ := set $probe "exec" (dict "command" $command) -}}
{{- else if hasKey $probe "httpGet" -}}
{{- $_ := set $probe.httpGet "scheme" (ternary "HTTPS" "HTTP" (eq (include "celery-exporter.tls" .root) "true")) -}}
{{- end -}}
{{- toYaml $probe -}}
{{- end -}}

{{- /* Combinations of values that cannot work stop the render with one line saying why. */}}
{{- define "celery-exporter.validate" -}}
{{- if not (or (include "celery-exporter.brokerFromValues" .) .Values.app.module) -}}
{{- fail "set broker.existingSecret (recommended) or broker.url" -}}
{{- end -}}
{{- $web := .Values.webConfig -}}
{{- if and $web.tls.enabled (not (or $web.tls.existingSecret $web.tls.cert $web.existingSecret)) -}}
{{- fail "webConfig.tls.enabled: set webConfig.tls.existingSecret (a Secret with tls.crt and tls.key), or webConfig.tls.cert and webConfig.tls.key" -}}
{{- end -}}
{{- if and $web.tls.clientCertificates (not $web.tls.enabled) -}}
{{- fail "webConfig.tls.clientCertificates needs webConfig.tls.enabled (client certificates are a part of TLS)" -}}
{{- end -}}
{{- if and $web.tls.existingSecret (or $web.tls.cert $web.tls.key) -}}
{{- fail "webConfig.tls: set either existingSecret or cert and key, not both" -}}
{{- end -}}
{{- if and $web.tls.enabled (not $web.tls.existingSecret) (not $web.existingSecret) (not (and $web.tls.cert $web.tls.key)) -}}
{{- fail "webConfig.tls: cert and key must both be set" -}}
{{- end -}}
{{- if and $web.existingSecret (or $web.tls.cert $web.tls.key $web.basicAuth.users) -}}
{{- fail "webConfig.existingSecret holds the whole web config file: leave webConfig.tls.cert, webConfig.tls.key and webConfig.basicAuth.users empty" -}}
{{- end -}}
{{- if and $web.basicAuth.enabled (not $web.basicAuth.users) (not $web.existingSecret) -}}
{{- fail "webConfig.basicAuth.enabled: set webConfig.basicAuth.users (user: bcrypt hash)" -}}
{{- end -}}
{{- if and $web.basicAuth.users (not $web.basicAuth.enabled) -}}
{{- fail "webConfig.basicAuth.users is set but webConfig.basicAuth.enabled is false" -}}
{{- end -}}
{{- if .Values.serviceMonitor.enabled -}}
{{- if and $web.basicAuth.enabled (not .Values.serviceMonitor.basicAuth.existingSecret) -}}
{{- fail "webConfig.basicAuth.enabled with serviceMonitor.enabled: set serviceMonitor.basicAuth.existingSecret (a Secret with the user name and plaintext password Prometheus sends)" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.tlsConfig.caSecret.name .Values.serviceMonitor.tlsConfig.insecureSkipVerify -}}
{{- fail "serviceMonitor.tlsConfig: set either caSecret.name or insecureSkipVerify, not both" -}}
{{- end -}}
{{- end -}}
{{- end -}}
