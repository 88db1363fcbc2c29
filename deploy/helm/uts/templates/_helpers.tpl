{{/* Names and labels. */}}
{{- define "uts.name" -}}{{ .Release.Name }}{{- end -}}

{{- define "uts.labels" -}}
app.kubernetes.io/name: uts
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "uts.selector" -}}
app.kubernetes.io/name: uts
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .stage }}
{{- end -}}

{{- define "uts.secretName" -}}
{{- if .Values.secrets.existingSecret -}}{{ .Values.secrets.existingSecret }}{{- else -}}{{ .Release.Name }}-uts{{- end -}}
{{- end -}}

{{- define "uts.image" -}}{{ .Values.image.repository }}:{{ .Values.image.tag }}{{- end -}}

{{- define "uts.sasl" -}}{{ hasPrefix "sasl" .Values.kafka.securityProtocol }}{{- end -}}

{{/* The settings every stage shares: Kafka (with TLS/SASL), PostgreSQL, logging, admin port. */}}
{{- define "uts.commonEnv" -}}
- name: UTS_KAFKA_BROKERS
  value: {{ .Values.kafka.brokers | quote }}
- name: UTS_TOPIC_PREFIX
  value: {{ .Values.kafka.topicPrefix | quote }}
- name: UTS_TOPIC_PARTITIONS
  value: {{ .Values.kafka.partitions | quote }}
- name: UTS_TOPIC_REPLICATION
  value: {{ .Values.kafka.replication | quote }}
- name: UTS_KAFKA_SECURITY_PROTOCOL
  value: {{ .Values.kafka.securityProtocol | quote }}
{{- if eq (include "uts.sasl" .) "true" }}
- name: UTS_KAFKA_SASL_MECHANISM
  value: {{ required "kafka.saslMechanism is required with a sasl_* security protocol" .Values.kafka.saslMechanism | quote }}
- name: UTS_KAFKA_SASL_USERNAME
  value: {{ required "kafka.saslUsername is required with a sasl_* security protocol" .Values.kafka.saslUsername | quote }}
- name: UTS_KAFKA_SASL_PASSWORD
  valueFrom:
    secretKeyRef: { name: {{ include "uts.secretName" . }}, key: UTS_KAFKA_SASL_PASSWORD }
{{- end }}
{{- if .Values.kafka.caSecret }}
- name: UTS_KAFKA_SSL_CA_FILE
  value: /etc/uts/kafka-ca/ca.pem
{{- end }}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef: { name: {{ include "uts.secretName" . }}, key: DATABASE_URL }
- name: UTS_ADMIN_ADDR
  value: "0.0.0.0:8081"
- name: UTS_LOG_FORMAT
  value: {{ .Values.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.rustLog | quote }}
{{- with .Values.telemetry.otlpEndpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ . | quote }}
- name: UTS_TRACE_SAMPLE_RATIO
  value: {{ $.Values.telemetry.traceSampleRatio | quote }}
{{- end }}
{{- end -}}

{{/* The settings of the processes that verify tokens (gateway, query service). */}}
{{- define "uts.authEnv" -}}
- name: UTS_JWT_HS256_SECRET
  valueFrom:
    secretKeyRef: { name: {{ include "uts.secretName" . }}, key: UTS_JWT_HS256_SECRET, optional: true }
{{- with .Values.auth.jwksUrl }}
- name: UTS_JWT_JWKS_URL
  value: {{ . | quote }}
{{- end }}
{{- with .Values.auth.issuer }}
- name: UTS_JWT_ISSUER
  value: {{ . | quote }}
{{- end }}
{{- with .Values.auth.audience }}
- name: UTS_JWT_AUDIENCE
  value: {{ . | quote }}
{{- end }}
{{- end -}}

{{/*
One stage's Deployment. Arguments: root (the chart's context), stage (component name), command,
values (the stage's values), env (extra env, YAML text), ports (list of {name, port}).
*/}}
{{- define "uts.deployment" -}}
{{- $root := .root -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ $root.Release.Name }}-{{ .stage }}
  labels:
    {{- include "uts.labels" $root | nindent 4 }}
    app.kubernetes.io/component: {{ .stage }}
spec:
  replicas: {{ .values.replicas }}
  selector:
    matchLabels:
      {{- include "uts.selector" . | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "uts.selector" . | nindent 8 }}
    spec:
      terminationGracePeriodSeconds: {{ $root.Values.terminationGracePeriodSeconds }}
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
      containers:
        - name: {{ .stage }}
          image: {{ include "uts.image" $root | quote }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: [{{ .command | quote }}]
          env:
            {{- include "uts.commonEnv" $root | nindent 12 }}
            {{- with .env }}
            {{- . | nindent 12 }}
            {{- end }}
          ports:
            - { name: admin, containerPort: 8081 }
            {{- range .ports }}
            - { name: {{ .name }}, containerPort: {{ .port }} }
            {{- end }}
          livenessProbe:
            httpGet: { path: /healthz, port: admin }
            periodSeconds: 10
            failureThreshold: 3
          readinessProbe:
            httpGet: { path: /readyz, port: admin }
            periodSeconds: 5
            failureThreshold: 3
          startupProbe:
            httpGet: { path: /healthz, port: admin }
            periodSeconds: 2
            failureThreshold: 60
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: { drop: ["ALL"] }
          {{- if $root.Values.kafka.caSecret }}
          volumeMounts:
            - { name: kafka-ca, mountPath: /etc/uts/kafka-ca, readOnly: true }
          {{- end }}
      {{- if $root.Values.kafka.caSecret }}
      volumes:
        - name: kafka-ca
          secret: { secretName: {{ $root.Values.kafka.caSecret }} }
      {{- end }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ $root.Release.Name }}-{{ .stage }}
  labels:
    {{- include "uts.labels" $root | nindent 4 }}
spec:
  maxUnavailable: {{ $root.Values.podDisruptionBudget.maxUnavailable }}
  selector:
    matchLabels:
      {{- include "uts.selector" . | nindent 6 }}
{{- end -}}
