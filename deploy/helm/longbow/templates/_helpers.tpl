{{- define "longbow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<name>, always (no shortening when the release name already
contains the chart's): the StatefulSet's claims are named after it
(wal-<fullname>-0), so a rule that renamed it would leave the data behind. */}}
{{- define "longbow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "longbow.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "longbow.labels" -}}
app.kubernetes.io/name: {{ include "longbow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "longbow.selector" -}}
app.kubernetes.io/name: {{ include "longbow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "longbow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "longbow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The label that lets a pod through the NetworkPolicy to the Flight port
(the helm test pod carries it): <fullname>-client: "true". */}}
{{- define "longbow.clientLabel" -}}
{{- printf "%s-client" (include "longbow.fullname" . | trunc 56 | trimSuffix "-") -}}
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

{{- /* Every pod's Flight URL, in ordinal order. */}}
{{- define "longbow.peers" -}}
{{- $name := include "longbow.fullname" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.replicaCount) -}}
{{- $scheme := ternary "grpc+tls" "grpc" (and $.Values.tls.enabled true) -}}
{{- $peers = append $peers (printf "%s://%s-%d.%s-headless.%s.svc:%v" $scheme $name $i $name $.Release.Namespace $.Values.service.flightPort) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}
