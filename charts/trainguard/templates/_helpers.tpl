{{/*
Helpers of the trainguard chart. Every name carries the chart's prefix ("trainguard."), so that they cannot clash with a
parent chart's helpers.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "trainguard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The fully qualified app name: fullnameOverride, else <release>-<name> (the release alone when it holds the name). */}}
{{- define "trainguard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, as the helm.sh/chart label wants it. */}}
{{- define "trainguard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator's pods (never change them after an install: selectors are immutable). */}}
{{- define "trainguard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "trainguard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels on every object of the chart. */}}
{{- define "trainguard.labels" -}}
helm.sh/chart: {{ include "trainguard.chart" . }}
{{ include "trainguard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trainguard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "trainguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "trainguard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* An image reference from {repository, tag, digest}; the tag defaults to the chart's appVersion. */}}
{{- define "trainguard.image" -}}
{{- $tag := default $.root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{/* The operator's metrics Service (its name is the scrape job of the ServiceMonitor). */}}
{{- define "trainguard.metricsServiceName" -}}
{{- printf "%s-metrics" (include "trainguard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Whether the operator watches every namespace (a ClusterRole) or only operator.watchNamespaces (Roles). */}}
{{- define "trainguard.clusterWide" -}}
{{- if not .Values.operator.watchNamespaces }}true{{ end }}
{{- end }}

{{/* The sensor's image: sensor.image, each empty field falling back to image. */}}
{{- define "trainguard.sensorImage" -}}
{{- $image := dict "repository" (default .Values.image.repository .Values.sensor.image.repository) "tag" (default .Values.image.tag .Values.sensor.image.tag) "digest" (default .Values.image.digest .Values.sensor.image.digest) }}
{{- include "trainguard.image" (dict "image" $image "root" .) }}
{{- end }}
