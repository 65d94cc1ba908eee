{{/*
Chart name, truncated to 63 characters (a label value).
*/}}
{{- define "accel-device-plugin.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name: <release>-<chart>, or the release name when it already contains the
chart name. Truncated to 59 characters so that "<fullname>-sim" fits in 63.
*/}}
{{- define "accel-device-plugin.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 59 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 59 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 59 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Name of the simulator DaemonSet. */}}
{{- define "accel-device-plugin.simName" -}}
{{- printf "%s-sim" (include "accel-device-plugin.fullname" .) }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "accel-device-plugin.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels of the chart's objects (NOT of pod templates: the chart version must not
reach the simulator's pod template, or every chart release would change it).
*/}}
{{- define "accel-device-plugin.labels" -}}
helm.sh/chart: {{ include "accel-device-plugin.chart" . }}
app.kubernetes.io/name: {{ include "accel-device-plugin.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: accel-device-plugin
{{- end }}

{{/*
Selector labels of one component; call with (dict "ctx" $ "component" "sim").
The two DaemonSets' selectors differ in app.kubernetes.io/component, so neither
adopts the other's pods.
*/}}
{{- define "accel-device-plugin.selectorLabels" -}}
app.kubernetes.io/name: {{ include "accel-device-plugin.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The image both DaemonSets run. */}}
{{- define "accel-device-plugin.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The plugin's ServiceAccount. */}}
{{- define "accel-device-plugin.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "accel-device-plugin.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The host directory both DaemonSets mount: the parent of devDir. */}}
{{- define "accel-device-plugin.devParent" -}}
{{- dir (clean .Values.devDir) }}
{{- end }}

{{/*
An octal mode value ("660" or "0660", the only forms the schema allows) as
four digits, the form the simulator's flags are rendered in.
*/}}
{{- define "accel-device-plugin.octalMode" -}}
{{- if eq (len .) 3 }}0{{ end }}{{ . }}
{{- end }}

{{/*
The security context of the plugin container, also used by its init
container: unprivileged, no capabilities, read-only root file system. uid 0
only because kubelet's device-plugin directory is root-owned (0750); it also
makes the plugin the owner of the simulator's root directory (root-owned,
simulator.dirMode), which it must read.
*/}}
{{- define "accel-device-plugin.pluginSecurityContext" -}}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsUser: 0
runAsGroup: 0
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
The plugin's recursiveReadOnly mode in effect. It applies to the chart's own
simulator: without it (simulator.enabled=false: kernel devices only, or a
simulator outside the chart that may start or restart at any time) the chart
has no simulator to wait for, and a view without propagation would never see
one that mounts later, so the mount is the Disabled one (HostToContainer).
Enabled without the chart's simulator is refused in validate.
*/}}
{{- define "accel-device-plugin.recursiveReadOnly" -}}
{{- if .Values.simulator.enabled }}{{ .Values.plugin.recursiveReadOnly }}{{ else }}Disabled{{ end }}
{{- end }}

{{/*
Whether the plugin pod waits for the simulator in an init container: when
its mount of the simulator's directory receives no later mounts
(recursiveReadOnly needs mountPropagation None).
*/}}
{{- define "accel-device-plugin.waitForSimulator" -}}
{{- if ne (include "accel-device-plugin.recursiveReadOnly" .) "Disabled" }}true{{ end }}
{{- end }}

{{/*
plugin.daemonTimeout in milliseconds (the schema allows only N ms, N s, N m).
*/}}
{{- define "accel-device-plugin.daemonTimeoutMillis" -}}
{{- $t := .Values.plugin.daemonTimeout }}
{{- if hasSuffix "ms" $t }}{{ trimSuffix "ms" $t | atoi }}
{{- else if hasSuffix "s" $t }}{{ mul (trimSuffix "s" $t | atoi) 1000 }}
{{- else }}{{ mul (trimSuffix "m" $t | atoi) 60000 }}
{{- end }}
{{- end }}

{{/* Log levels: the component's own, else the shared logLevel. */}}
{{- define "accel-device-plugin.simLogLevel" -}}
{{- .Values.simulator.logLevel | default .Values.logLevel }}
{{- end }}
{{- define "accel-device-plugin.pluginLogLevel" -}}
{{- .Values.plugin.logLevel | default .Values.logLevel }}
{{- end }}

{{/*
The RBAC objects exist only when they are asked for and needed: the device
plugin calls the API server only to label its node; the DRA driver also for
its ResourceSlices and the claims it prepares.
*/}}
{{- define "accel-device-plugin.rbacEnabled" -}}
{{- if and .Values.rbac.create (or .Values.plugin.labelNode (eq .Values.api "dra")) }}true{{ end }}
{{- end }}

{{/* The DRA driver's data directory (sockets, checkpoint): one per driver name. */}}
{{- define "accel-device-plugin.draDataDir" -}}
{{- printf "%s/%s" (clean .Values.dra.pluginsDir) .Values.plugin.resourcePrefix }}
{{- end }}

{{/* The plugin DaemonSet's update strategy: plugin.updateStrategy, or the
api's default when it is empty (see values.yaml). */}}
{{- define "accel-device-plugin.pluginUpdateStrategy" -}}
{{- $s := .Values.plugin.updateStrategy }}
{{- if not $s }}
{{- if eq .Values.api "dra" }}
{{- $s = dict "type" "RollingUpdate" "rollingUpdate" (dict "maxSurge" 1 "maxUnavailable" 0) }}
{{- else }}
{{- $s = dict "type" "RollingUpdate" "rollingUpdate" (dict "maxUnavailable" 1) }}
{{- end }}
{{- end }}
{{- include "accel-device-plugin.updateStrategy" $s }}
{{- end }}

{{/* The plugin may GET its own DaemonSet, to tell an uninstall from a
restart when it stops and remove its CDI specs only then. */}}
{{- define "accel-device-plugin.uninstallCheck" -}}
{{- if and .Values.rbac.create (or .Values.cdi.enabled (eq .Values.api "dra")) }}true{{ end }}
{{- end }}

{{/* Scheduling and pod-level settings shared by both DaemonSets. */}}
{{- define "accel-device-plugin.podScheduling" -}}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* A DaemonSet updateStrategy; rollingUpdate only with type RollingUpdate. */}}
{{- define "accel-device-plugin.updateStrategy" -}}
type: {{ .type }}
{{- if and (eq .type "RollingUpdate") .rollingUpdate }}
rollingUpdate:
  {{- toYaml .rollingUpdate | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Checks the schema cannot express with a clear message; included by the plugin
DaemonSet (always rendered).
*/}}
{{- define "accel-device-plugin.validate" -}}
{{- if and (eq .Values.api "dra") .Values.cdi.enabled }}
{{- fail "cdi.enabled is for api=devicePlugin: the DRA driver (api=dra) always hands devices out through CDI, with its specs in cdi.specDir; set cdi.enabled=false" }}
{{- end }}
{{- if and (eq .Values.api "dra") (eq (clean .Values.dra.pluginsDir) (clean .Values.dra.registrarDir)) }}
{{- fail "dra.pluginsDir and dra.registrarDir must differ: kubelet watches the registry for registration sockets only" }}
{{- end }}
{{- if and (or (include "accel-device-plugin.rbacEnabled" .) (include "accel-device-plugin.uninstallCheck" .)) (not .Values.serviceAccount.create) (not .Values.serviceAccount.name) }}
{{- fail "rbac.create with serviceAccount.create=false needs serviceAccount.name: otherwise the node permissions would go to the namespace's default ServiceAccount" }}
{{- end }}
{{- $dirMode := include "accel-device-plugin.octalMode" .Values.simulator.dirMode }}
{{- if and .Values.simulator.enabled (not (has (substr 1 2 $dirMode | atoi) (list 5 7))) }}
{{- fail (printf "simulator.dirMode %q: the owner (root) needs read and search permission (r-x: 0500, 0700, 0750, ...): the plugin runs as uid 0 without capabilities, so it could not list %s nor reach the nodes" .Values.simulator.dirMode (clean .Values.devDir)) }}
{{- end }}
{{- if .Values.simulator.drivers }}
{{- $total := 0 }}
{{- range splitList "," .Values.simulator.drivers }}
{{- $parts := splitList ":" . }}
{{- if eq (len $parts) 2 }}
{{- $total = add $total (index $parts 1 | atoi) }}
{{- else }}
{{- $total = add $total 1 }}
{{- end }}
{{- end }}
{{- if gt (int $total) 256 }}
{{- fail (printf "simulator.drivers %q starts %d devices: a simulator holds 256 at most" .Values.simulator.drivers (int $total)) }}
{{- end }}
{{- end }}
{{- $ms := include "accel-device-plugin.daemonTimeoutMillis" . | atoi }}
{{- if or (lt $ms 100) (gt $ms 60000) }}
{{- fail (printf "plugin.daemonTimeout %q is out of range: want 100ms to 1m (every access to the device daemon is bounded by it; the default is 3s)" .Values.plugin.daemonTimeout) }}
{{- end }}
{{- if and (not .Values.simulator.enabled) (eq .Values.plugin.recursiveReadOnly "Enabled") }}
{{- fail "plugin.recursiveReadOnly=Enabled needs the chart's simulator (simulator.enabled): without it the plugin's view of devDir must receive mounts made after it started (a simulator outside the chart, which the chart cannot wait for), and a recursively read-only mount receives none. Use IfPossible or Disabled (both: HostToContainer, non-recursive, when simulator.enabled=false)" }}
{{- end }}
{{- if or .Values.cdi.enabled (eq .Values.api "dra") }}
{{- $spec := clean .Values.cdi.specDir }}
{{- $dirs := dict "devDir's parent" (include "accel-device-plugin.devParent" .) "/dev/accel" "/dev/accel" }}
{{- if eq .Values.api "dra" }}
{{- $_ := set $dirs "dra.pluginsDir" (clean .Values.dra.pluginsDir) }}
{{- $_ := set $dirs "dra.registrarDir" (clean .Values.dra.registrarDir) }}
{{- else }}
{{- $_ := set $dirs "kubeletDir" (clean .Values.kubeletDir) }}
{{- end }}
{{- range $what, $dir := $dirs }}
{{- if or (eq $spec $dir) (hasPrefix (printf "%s/" $spec) $dir) (hasPrefix (printf "%s/" $dir) $spec) }}
{{- fail (printf "cdi.specDir %s overlaps %s (%s): the plugin mounts the spec directory read-write, so it must be a directory of its own, e.g. /var/run/cdi" $spec $what $dir) }}
{{- end }}
{{- end }}
{{- end }}
{{- if regexMatch "kubernetes\\.io$" .Values.plugin.resourcePrefix }}
{{- fail (printf "plugin.resourcePrefix %q: prefixes ending in kubernetes.io are reserved for Kubernetes' own resources (%s/ac would not be an extended resource); use a domain of your own, e.g. accel.io" .Values.plugin.resourcePrefix .Values.plugin.resourcePrefix) }}
{{- end }}
{{- end }}
