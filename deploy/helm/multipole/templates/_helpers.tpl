{{/* Names and labels shared by every manifest of the chart. */}}

{{/* The chart's name, or nameOverride. */}}
{{- define "multipole.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Resource names: the release name, suffixed with the chart name unless it already holds it. */}}
{{- define "multipole.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "multipole.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "multipole.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the server's pods (must not change between upgrades). */}}
{{- define "multipole.selectorLabels" -}}
app.kubernetes.io/name: {{ include "multipole.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "multipole.labels" -}}
{{ include "multipole.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: multipole
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* image.tag, or the appVersion (with -cuda when a GPU is requested). */}}
{{- define "multipole.image" -}}
{{- $tag := .Values.image.tag | default (ternary (printf "%s-cuda" .Chart.AppVersion) .Chart.AppVersion .Values.gpu.enabled) -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* The claim the model volume uses, for the two claim types. */}}
{{- define "multipole.modelClaim" -}}
{{- if eq .Values.model.volume.type "existingClaim" -}}
{{- required "model.volume.existingClaim must name a PersistentVolumeClaim" .Values.model.volume.existingClaim -}}
{{- else -}}
{{- printf "%s-models" (include "multipole.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/*
The pod's grace period: longer than the preStop sleep plus the server's drain timeout, so SIGTERM
drains streams before the kubelet sends SIGKILL.
*/}}
{{- define "multipole.terminationGracePeriodSeconds" -}}
{{- $floor := add (int64 .Values.preStopSleepSeconds) (int64 .Values.server.drainTimeoutSeconds) -}}
{{- $value := .Values.terminationGracePeriodSeconds -}}
{{- if or (kindIs "invalid" $value) (eq (toString $value) "") -}}
{{- add $floor 20 -}}
{{- else -}}
{{- $set := int64 $value -}}
{{- if le $set $floor -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStopSleepSeconds + server.drainTimeoutSeconds (%d), or running streams are killed before they drain" $set $floor) -}}
{{- end -}}
{{- $set -}}
{{- end -}}
{{- end -}}

{{/*
The port the probes use: the gRPC port, or with TLS the plaintext health-only port (Kubernetes'
gRPC probes cannot speak TLS).
*/}}
{{- define "multipole.probePort" -}}
{{- if .Values.tls.enabled -}}
{{- int64 .Values.probes.healthPort -}}
{{- else -}}
{{- int64 .Values.server.grpcPort -}}
{{- end -}}
{{- end -}}

{{/* Labels that select the router's pods. */}}
{{- define "multipole.routerSelectorLabels" -}}
app.kubernetes.io/name: {{ include "multipole.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: router
{{- end -}}

{{- define "multipole.routerLabels" -}}
{{ include "multipole.routerSelectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: multipole
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* The headless Service that governs the servers' StatefulSet (router.enabled). */}}
{{- define "multipole.replicasService" -}}
{{- printf "%s-replicas" (include "multipole.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The router's server slots: one per pod the StatefulSet can have (replicaCount, or with
autoscaling its maxReplicas), so a pod the autoscaler adds is already in the router's list.
*/}}
{{- define "multipole.serverSlots" -}}
{{- $slots := int64 .Values.replicaCount -}}
{{- if .Values.autoscaling.enabled -}}
{{- $slots = max $slots (int64 .Values.autoscaling.maxReplicas) -}}
{{- end -}}
{{- $slots -}}
{{- end -}}

{{/*
The router's configuration: files/haproxy.cfg as it is (the file the router end-to-end test
runs), then one `server` line per slot naming the StatefulSet pod through the headless Service.
*/}}
{{- define "multipole.routerConfig" -}}
{{- $fullname := include "multipole.fullname" . -}}
{{- $replicas := include "multipole.replicasService" . -}}
{{- $config := .Files.Get "files/haproxy.cfg" -}}
{{- range $i := until (int (include "multipole.serverSlots" .)) -}}
{{- $config = printf "%s  server mpa%d %s-%d.%s.%s.svc.%s:%d\n" $config $i $fullname $i $replicas $.Release.Namespace $.Values.router.clusterDomain (int64 $.Values.server.grpcPort) -}}
{{- end -}}
{{- $config -}}
{{- end -}}

{{/* The router's grace period: its preStop sleep and drain, and 10 s to exit. */}}
{{- define "multipole.routerTerminationGracePeriodSeconds" -}}
{{- add (int64 .Values.router.preStopSleepSeconds) (int64 .Values.router.drainSeconds) 10 -}}
{{- end -}}
