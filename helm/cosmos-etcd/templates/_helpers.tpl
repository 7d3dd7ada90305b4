{{/*
Names, labels, the image and the pieces that the operator's and the shim's workloads share.
*/}}

{{- define "cosmos-etcd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name; component objects append "-operator" or "-shim" (hence 53). */}}
{{- define "cosmos-etcd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 53 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 53 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The full name of a component: (dict "ctx" $ "component" "operator") */}}
{{- define "cosmos-etcd.componentName" -}}
{{- printf "%s-%s" (include "cosmos-etcd.fullname" .ctx) .component }}
{{- end }}

{{- define "cosmos-etcd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of a component: (dict "ctx" $ "component" "shim") */}}
{{- define "cosmos-etcd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cosmos-etcd.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Standard labels of every object of a component: (dict "ctx" $ "component" "shim") */}}
{{- define "cosmos-etcd.labels" -}}
helm.sh/chart: {{ include "cosmos-etcd.chart" .ctx }}
{{ include "cosmos-etcd.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: cosmos-etcd
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/* The image of both roles: by digest when one is given, else by tag (default: appVersion). */}}
{{- define "cosmos-etcd.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* A component's ServiceAccount name: (dict "ctx" $ "component" "operator") */}}
{{- define "cosmos-etcd.serviceAccountName" -}}
{{- $values := index .ctx.Values .component -}}
{{- if $values.serviceAccount.create }}
{{- $values.serviceAccount.name | default (include "cosmos-etcd.componentName" .) }}
{{- else }}
{{- $values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/*
A component's ServiceAccount, with the workload identity client id when that is on:
(dict "ctx" $ "component" "operator" "automount" true)
*/}}
{{- define "cosmos-etcd.serviceAccount" -}}
{{- $values := index .ctx.Values .component -}}
{{- if $values.serviceAccount.create }}
{{- $annotations := $values.serviceAccount.annotations | default dict }}
{{- if $values.workloadIdentity.enabled }}
{{- $annotations = merge (dict "azure.workload.identity/client-id" $values.workloadIdentity.clientId) $annotations }}
{{- end }}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "cosmos-etcd.serviceAccountName" . }}
  namespace: {{ .ctx.Release.Namespace }}
  labels:
    {{- include "cosmos-etcd.labels" . | nindent 4 }}
  {{- with $annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: {{ .automount }}
{{- end }}
{{- end }}

{{/*
The pod template's metadata and the pod-level fields both workloads share, restricted Pod
Security included: (dict "ctx" $ "component" "shim")
*/}}
{{- define "cosmos-etcd.podMetadata" -}}
{{- $values := index .ctx.Values .component -}}
metadata:
  labels:
    {{- include "cosmos-etcd.labels" . | nindent 4 }}
    {{- if $values.workloadIdentity.enabled }}
    azure.workload.identity/use: "true"
    {{- end }}
    {{- with $values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $values.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{- define "cosmos-etcd.podSpecCommon" -}}
{{- $values := index .ctx.Values .component -}}
serviceAccountName: {{ include "cosmos-etcd.serviceAccountName" . }}
{{- with .ctx.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
securityContext:
  runAsNonRoot: true
  runAsUser: 65532
  runAsGroup: 65532
  fsGroup: 65532
  seccompProfile:
    type: RuntimeDefault
{{- with $values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with $values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  # The root filesystem is read-only: temporary files (snapshots, for one) go here.
  - name: tmp
    emptyDir: {}
{{- end }}

{{/* The container-level fields both workloads share: (dict "ctx" $ "component" "shim") */}}
{{- define "cosmos-etcd.containerCommon" -}}
{{- $values := index .ctx.Values .component -}}
image: {{ include "cosmos-etcd.image" .ctx }}
imagePullPolicy: {{ .ctx.Values.image.pullPolicy }}
securityContext:
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: true
  privileged: false
  capabilities:
    drop: ["ALL"]
{{- with $values.resources }}
resources:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The scrape settings of every ServiceMonitor endpoint. */}}
{{- define "cosmos-etcd.scrapeSettings" -}}
{{- with .Values.monitoring.serviceMonitor -}}
interval: {{ .interval }}
scrapeTimeout: {{ .scrapeTimeout }}
{{- end }}
{{- end }}

{{/* The labels of a monitoring object: the component's, and those Prometheus selects by:
(dict "ctx" $ "component" "shim" "extra" .Values.monitoring.serviceMonitor.labels) */}}
{{- define "cosmos-etcd.monitoringLabels" -}}
{{ include "cosmos-etcd.labels" . }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end }}
