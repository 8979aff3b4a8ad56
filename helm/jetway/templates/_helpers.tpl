{{/*
Named templates of the jetway chart. They read only .Values and .Release, so
a parent chart that has jetway as a dependency can call them with its
sub-values:

  {{- $jetway := dict "Values" .Values.jetway "Release" .Release }}
  initContainers:
    {{- include "jetway.sidecar" $jetway | nindent 4 }}
  volumes:
    {{- include "jetway.volumes" $jetway | nindent 4 }}

The container and volumes are the same as `jetway inject` adds
(tests/deploy.rs checks that).
*/}}

{{/* Labels of everything this chart renders. */}}
{{- define "jetway.labels" -}}
app.kubernetes.io/name: jetway
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Name of the ConfigMap holding jetway.yaml. */}}
{{- define "jetway.configMapName" -}}
{{- default (printf "%s-jetway" .Release.Name) .Values.configMap.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The jetway image reference. */}}
{{- define "jetway.image" -}}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}

{{/*
The sidecar container, as one list item: include it under initContainers
(nativeSidecar: true, Kubernetes 1.29+) or containers (nativeSidecar: false).

Probes (SPEC section 7): /readyz is the startup probe only (the app starts
once jetway can publish); readiness and liveness are on /healthz, so a NATS
outage does not take the pod out of its Services. Publishes answer 503
nats_unavailable with Retry-After meanwhile and deliveries wait; alert on
JetwayNatsDisconnected (deploy/README.md, "Probes and NATS outages").
*/}}
{{- define "jetway.sidecar" -}}
- name: jetway
  image: {{ include "jetway.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if .Values.nativeSidecar }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/jetway/jetway.yaml"]
  {{- with .Values.env }}
  env:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  ports:
    - name: jetway-api
      containerPort: 4480
      protocol: TCP
    - name: jetway-metrics
      containerPort: 4481
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: jetway-metrics
    {{- toYaml .Values.probes.startup | nindent 4 }}
  readinessProbe:
    httpGet:
      path: /healthz
      port: jetway-metrics
    {{- toYaml .Values.probes.readiness | nindent 4 }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: jetway-metrics
    {{- toYaml .Values.probes.liveness | nindent 4 }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    - name: jetway-config
      mountPath: /etc/jetway
      readOnly: true
    {{- if .Values.natsCredentials.secretName }}
    - name: jetway-nats-credentials
      mountPath: /var/run/secrets/jetway
      readOnly: true
    {{- end }}
{{- end }}

{{/* The sidecar's volumes, as list items for the pod's volumes. */}}
{{- define "jetway.volumes" -}}
- name: jetway-config
  configMap:
    name: {{ include "jetway.configMapName" . }}
    items:
      - key: jetway.yaml
        path: jetway.yaml
{{- if .Values.natsCredentials.secretName }}
- name: jetway-nats-credentials
  secret:
    secretName: {{ .Values.natsCredentials.secretName }}
    items:
      - key: nats.creds
        path: nats.creds
{{- end }}
{{- end }}

{{/*
Pod template annotations: a checksum of the config, so that a config change
rolls the pods (jetway reads its config at start only).
*/}}
{{- define "jetway.podAnnotations" -}}
checksum/jetway-config: {{ toYaml .Values.config | sha256sum }}
{{- end }}

{{/* The ConfigMap holding jetway.yaml, rendered from .Values.config. */}}
{{- define "jetway.configMap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "jetway.configMapName" . }}
  labels:
    {{- include "jetway.labels" . | nindent 4 }}
data:
  jetway.yaml: |
    {{- toYaml .Values.config | nindent 4 }}
{{- end }}

{{/* Labels of the example workload's pods. */}}
{{- define "jetway.exampleSelectorLabels" -}}
app.kubernetes.io/name: jetway-example
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}
