{{- define "longbow.fullname" -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "longbow.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "longbow.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Health probe: grpc.health.v1 on the Flight port, or, with TLS (the
kubelet's gRPC probe cannot speak it), the plain-HTTP /healthz on the
metrics port, which answers 503 once a shard is poisoned. */}}
{{- define "longbow.probe" -}}
{{- if .Values.tls.enabled -}}
httpGet:
  path: /healthz
  port: {{ .Values.service.metricsPort }}
{{- else -}}
grpc:
  port: {{ .Values.service.flightPort }}
{{- end -}}
{{- end -}}
