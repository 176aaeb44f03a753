{{/*
The server's pod template (a Deployment's, or with router.enabled a StatefulSet's), with the
checks of the values it reads: rendering fails with a message naming a bad value.
*/}}
{{- define "multipole.serverPod" -}}
{{- $modes := list "dense" "multipole" "exact-only" "quest" -}}
{{- if not (has .Values.server.attention $modes) -}}
{{- fail (printf "server.attention must be one of %s, not %q" (join ", " $modes) .Values.server.attention) -}}
{{- end -}}
{{- $sparseOnGpu := and .Values.gpu.enabled (has .Values.server.attention (list "multipole" "exact-only")) -}}
{{- if and $sparseOnGpu (ne (toString (default "post_rope" (index .Values.server.multipole "centroid_keys"))) "post_rope") -}}
{{- fail "server.multipole.centroid_keys is not available with gpu.enabled and sparse attention: the GPU engine clusters post_rope keys" -}}
{{- end -}}
{{- $multipoleFlags := list "token_budget_fraction" "cluster_ratio" "levels" "cluster_interval" "sink_tokens" "min_clustered_tokens" "block_tokens" "centroid_keys" "lookup_position" -}}
{{- if .Values.tls.enabled -}}
{{- if not .Values.tls.secretName -}}
{{- fail "tls.secretName must name a kubernetes.io/tls secret (keys tls.crt and tls.key) when tls.enabled" -}}
{{- end -}}
{{- $healthPort := int64 .Values.probes.healthPort -}}
{{- if or (eq $healthPort (int64 .Values.server.grpcPort)) (and .Values.metrics.enabled (eq $healthPort (int64 .Values.metrics.port))) -}}
{{- fail (printf "probes.healthPort (%d) must differ from server.grpcPort and metrics.port" $healthPort) -}}
{{- end -}}
{{- else if .Values.tls.clientCaKey -}}
{{- fail "tls.clientCaKey needs tls.enabled: client certificates are checked only over TLS" -}}
{{- end -}}
{{- if .Values.apiKeys.enabled -}}
{{- if not .Values.apiKeys.secretName -}}
{{- fail "apiKeys.secretName must name a secret holding the API key file when apiKeys.enabled" -}}
{{- end -}}
{{- if not .Values.apiKeys.secretKey -}}
{{- fail "apiKeys.secretKey must name the key of the secret that holds the API key file" -}}
{{- end -}}
{{- $perKey := int64 .Values.apiKeys.maxSessionsPerKey -}}
{{- if and (ne $perKey -1) (lt $perKey 1) -}}
{{- fail (printf "apiKeys.maxSessionsPerKey must be -1 (maxSessions / 4) or at least 1, not %d" $perKey) -}}
{{- end -}}
{{- if and .Values.tls.enabled (eq (clean .Values.apiKeys.mountPath) (clean .Values.tls.mountPath)) -}}
{{- fail "apiKeys.mountPath must differ from tls.mountPath" -}}
{{- end -}}
{{- end -}}
{{- $volumeTypes := list "existingClaim" "persistentVolumeClaim" "hostPath" -}}
{{- if not (has .Values.model.volume.type $volumeTypes) -}}
{{- fail (printf "model.volume.type must be one of %s, not %q" (join ", " $volumeTypes) .Values.model.volume.type) -}}
{{- end -}}
metadata:
  labels:
    {{- include "multipole.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- if or .Values.podAnnotations (and .Values.metrics.enabled .Values.metrics.podAnnotations) }}
  annotations:
    {{- if and .Values.metrics.enabled .Values.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ .Values.metrics.port | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  automountServiceAccountToken: false
  {{- with .Values.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  # Longer than preStop + --drain_timeout: SIGTERM lets running streams finish.
  terminationGracePeriodSeconds: {{ include "multipole.terminationGracePeriodSeconds" . }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  containers:
    - name: mpa-server
      image: {{ include "multipole.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - {{ printf "--model=%s/%s" .Values.model.mountPath .Values.model.name | quote }}
        - {{ printf "--address=0.0.0.0:%d" (int64 .Values.server.grpcPort) | quote }}
        {{- if .Values.metrics.enabled }}
        - {{ printf "--metrics_address=0.0.0.0:%d" (int64 .Values.metrics.port) | quote }}
        {{- end }}
        {{- if .Values.gpu.enabled }}
        - "--device=cuda"
        {{- end }}
        - {{ printf "--attention=%s" .Values.server.attention | quote }}
        - {{ printf "--token_budget=%d" (int64 .Values.server.tokenBudget) | quote }}
        - {{ printf "--max_sessions=%d" (int64 .Values.server.maxSessions) | quote }}
        - {{ printf "--max_kv_tokens=%d" (int64 .Values.server.maxKvTokens) | quote }}
        - {{ printf "--kv_block_tokens=%d" (int64 .Values.server.kvBlockTokens) | quote }}
        - {{ printf "--max_prompt_tokens=%d" (int64 .Values.server.maxPromptTokens) | quote }}
        - {{ printf "--max_total_tokens=%d" (int64 .Values.server.maxTotalTokens) | quote }}
        - {{ printf "--session_ttl=%s" (toString .Values.server.sessionTtl) | quote }}
        - {{ printf "--prefill_chunk_tokens=%d" (int64 .Values.server.prefillChunkTokens) | quote }}
        - {{ printf "--max_batch_size=%d" (int64 .Values.server.maxBatchSize) | quote }}
        - {{ printf "--default_max_new_tokens=%d" (int64 .Values.server.defaultMaxNewTokens) | quote }}
        - {{ printf "--threads=%d" (int64 .Values.server.threads) | quote }}
        - {{ printf "--drain_timeout=%ds" (int64 .Values.server.drainTimeoutSeconds) | quote }}
        {{- range $flag, $value := .Values.server.multipole }}
        {{- if not (has $flag $multipoleFlags) }}
        {{- fail (printf "server.multipole.%s is not a flag of mpa_server (known: %s)" $flag (join ", " $multipoleFlags)) }}
        {{- end }}
        {{- /* Values arrive as float64: print whole numbers as integers, not 1.6e+01. */}}
        {{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
        {{- $value = int64 $value }}
        {{- end }}
        - {{ printf "--%s=%v" $flag $value | quote }}
        {{- end }}
        {{- if .Values.tls.enabled }}
        - {{ printf "--tls_cert=%s/tls.crt" .Values.tls.mountPath | quote }}
        - {{ printf "--tls_key=%s/tls.key" .Values.tls.mountPath | quote }}
        {{- with .Values.tls.clientCaKey }}
        - {{ printf "--tls_client_ca=%s/%s" $.Values.tls.mountPath . | quote }}
        {{- end }}
        - {{ printf "--tls_reload_interval_s=%d" (int64 .Values.tls.reloadIntervalSeconds) | quote }}
        # Kubernetes' gRPC probes cannot speak TLS: health alone, in plaintext, for them.
        - {{ printf "--health_address=0.0.0.0:%d" (int64 .Values.probes.healthPort) | quote }}
        {{- end }}
        {{- if .Values.apiKeys.enabled }}
        - {{ printf "--api_keys_file=%s/%s" .Values.apiKeys.mountPath .Values.apiKeys.secretKey | quote }}
        - {{ printf "--max_sessions_per_key=%d" (int64 .Values.apiKeys.maxSessionsPerKey) | quote }}
        {{- end }}
        {{- range .Values.server.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- with .Values.env }}
      env:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: grpc
          containerPort: {{ .Values.server.grpcPort }}
          protocol: TCP
        {{- if .Values.metrics.enabled }}
        - name: metrics
          containerPort: {{ .Values.metrics.port }}
          protocol: TCP
        {{- end }}
        {{- if .Values.tls.enabled }}
        - name: health
          containerPort: {{ .Values.probes.healthPort }}
          protocol: TCP
        {{- end }}
      startupProbe:
        grpc:
          port: {{ include "multipole.probePort" . }}
          service: {{ .Values.probes.healthService | quote }}
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      readinessProbe:
        grpc:
          port: {{ include "multipole.probePort" . }}
          service: {{ .Values.probes.healthService | quote }}
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      livenessProbe:
        grpc:
          port: {{ include "multipole.probePort" . }}
          service: {{ .Values.probes.healthService | quote }}
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      {{- if gt (int64 .Values.preStopSleepSeconds) 0 }}
      lifecycle:
        preStop:
          exec:
            command: ["sleep", {{ .Values.preStopSleepSeconds | int64 | toString | quote }}]
      {{- end }}
      resources:
        {{- $resources := deepCopy .Values.resources }}
        {{- if .Values.gpu.enabled }}
        {{- $limits := get $resources "limits" | default dict }}
        {{- $_ := set $limits .Values.gpu.resourceName (int64 .Values.gpu.count) }}
        {{- $_ := set $resources "limits" $limits }}
        {{- end }}
        {{- toYaml $resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: models
          mountPath: {{ .Values.model.mountPath }}
          readOnly: true
          {{- with .Values.model.volume.subPath }}
          subPath: {{ . }}
          {{- end }}
        # The root file system is read-only; scratch space for libraries that want /tmp.
        - name: tmp
          mountPath: /tmp
        {{- if .Values.tls.enabled }}
        # The whole secret volume, not subPath: only then does a renewed secret reach the files.
        - name: tls
          mountPath: {{ .Values.tls.mountPath }}
          readOnly: true
        {{- end }}
        {{- if .Values.apiKeys.enabled }}
        - name: api-keys
          mountPath: {{ .Values.apiKeys.mountPath }}
          readOnly: true
        {{- end }}
  volumes:
    - name: models
      {{- if eq .Values.model.volume.type "hostPath" }}
      hostPath:
        path: {{ required "model.volume.hostPath must name a folder on the node" .Values.model.volume.hostPath }}
        type: Directory
      {{- else }}
      persistentVolumeClaim:
        claimName: {{ include "multipole.modelClaim" . }}
        readOnly: true
      {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 1Gi
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.secretName }}
        # Readable by the server through the pod's fsGroup, by no one else.
        defaultMode: 0440
    {{- end }}
    {{- if .Values.apiKeys.enabled }}
    - name: api-keys
      secret:
        secretName: {{ .Values.apiKeys.secretName }}
        # Only the key file, readable by the server through the pod's fsGroup.
        items:
          - key: {{ .Values.apiKeys.secretKey }}
            path: {{ .Values.apiKeys.secretKey }}
        defaultMode: 0440
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end -}}
