{{/* Names and labels, in the conventions of Bitnami and zero-to-jupyterhub. */}}

{{- define "atrium.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "atrium.fullname" -}}
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

{{- define "atrium.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "atrium.selectorLabels" -}}
app.kubernetes.io/name: {{ include "atrium.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: portal
{{- end -}}

{{- define "atrium.labels" -}}
helm.sh/chart: {{ include "atrium.chart" . }}
app.kubernetes.io/name: {{ include "atrium.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "atrium.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "atrium.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "atrium.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "atrium.sessionsNamespace" -}}
{{- default .Release.Namespace .Values.kubernetes.sessionsNamespace -}}
{{- end -}}

{{- define "atrium.deploymentId" -}}
{{- default .Release.Name .Values.deploymentId -}}
{{- end -}}

{{- define "atrium.databaseSecret" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else -}}
{{- printf "%s-database" (include "atrium.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The values every install needs, checked once with messages naming them. */}}
{{- define "atrium.validate" -}}
{{- if not .Values.portal.publicUrl -}}
{{- fail "portal.publicUrl is required: the URL users reach, e.g. https://atrium.example.org" -}}
{{- end -}}
{{- if not .Values.cookieSecret.existingSecret -}}
{{- fail "cookieSecret.existingSecret is required: a Secret whose key cookie-secret holds at least 32 random characters (kubectl create secret generic atrium --from-literal=cookie-secret=$(openssl rand -hex 32))" -}}
{{- end -}}
{{- if and (not .Values.database.existingSecret) (not .Values.database.url) -}}
{{- fail "database.existingSecret (or database.url) is required: the PostgreSQL URL, postgresql://USER:PASSWORD@HOST:5432/DB" -}}
{{- end -}}
{{- if and (has "openstack" .Values.portal.backends) (or (not .Values.openstack.cloud) (not .Values.openstack.existingSecret)) -}}
{{- fail "openstack.cloud and openstack.existingSecret are required with the openstack backend (portal.backends)" -}}
{{- end -}}
{{- if ge (int .Values.portal.shutdown.graceSeconds) (int .Values.portal.terminationGracePeriodSeconds) -}}
{{- fail "portal.shutdown.graceSeconds must be below portal.terminationGracePeriodSeconds (Kubernetes kills the pod then)" -}}
{{- end -}}
{{- end -}}

{{/* The database URL (for every container that touches the database). */}}
{{- define "atrium.databaseEnv" -}}
- name: ATRIUM_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "atrium.databaseSecret" . }}
      key: {{ .Values.database.key }}
- name: ATRIUM_STATE_DIR
  value: /var/lib/atrium
- name: ATRIUM_LOG_FORMAT
  value: {{ .Values.portal.logFormat | quote }}
- name: ATRIUM_DEPLOYMENT_ID
  value: {{ include "atrium.deploymentId" . | quote }}
{{- end -}}

{{/* The portal's settings as environment variables (orchestrator/settings.py). */}}
{{- define "atrium.portalEnv" -}}
{{ include "atrium.databaseEnv" . }}
- name: ATRIUM_COOKIE_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.cookieSecret.existingSecret }}
      key: {{ .Values.cookieSecret.key }}
- name: ATRIUM_HOST
{{- if .Values.portal.listenOnPodIP }}
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- else }}
  value: 0.0.0.0
{{- end }}
- name: ATRIUM_PORT
  value: {{ .Values.portal.port | quote }}
- name: ATRIUM_PUBLIC_URL
  value: {{ .Values.portal.publicUrl | quote }}
- name: ATRIUM_BACKENDS
  value: {{ join "," .Values.portal.backends | quote }}
- name: ATRIUM_RECONCILE_INTERVAL
  value: {{ .Values.portal.reconcileInterval | quote }}
- name: ATRIUM_START_TIMEOUT
  value: {{ .Values.portal.startTimeout | quote }}
- name: ATRIUM_DEFAULT_QUOTA
  value: {{ .Values.portal.defaultQuota | quote }}
- name: ATRIUM_SHUTDOWN_DRAIN
  value: {{ .Values.portal.shutdown.drainSeconds | quote }}
- name: ATRIUM_SHUTDOWN_GRACE
  value: {{ .Values.portal.shutdown.graceSeconds | quote }}
- name: ATRIUM_K8S_NAMESPACE
  value: {{ include "atrium.sessionsNamespace" . | quote }}
- name: ATRIUM_K8S_USE_SERVICE
  value: {{ .Values.kubernetes.useService | quote }}
{{- if .Values.kubernetes.podConfig }}
- name: ATRIUM_K8S_POD_CONFIG
  value: /etc/atrium/pod-config.yaml
{{- end }}
{{- if .Values.experiments.content }}
- name: ATRIUM_EXPERIMENTS_FILE
  value: /etc/atrium/experiments.yaml
- name: ATRIUM_EXPERIMENTS_SYNC_INTERVAL
  value: {{ .Values.experiments.syncInterval | quote }}
{{- end }}
{{- if .Values.sessions.domain }}
- name: ATRIUM_SESSIONS_DOMAIN
  value: {{ .Values.sessions.domain | quote }}
{{- end }}
{{- if .Values.metrics.enabled }}
- name: ATRIUM_METRICS_PORT
  value: {{ .Values.metrics.port | quote }}
{{- if .Values.metrics.existingSecret }}
- name: ATRIUM_METRICS_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ .Values.metrics.existingSecret }}
      key: {{ .Values.metrics.key }}
{{- end }}
{{- end }}
{{- if .Values.oidc.issuer }}
- name: ATRIUM_OIDC_ISSUER
  value: {{ .Values.oidc.issuer | quote }}
- name: ATRIUM_OIDC_CLIENT_ID
  value: {{ .Values.oidc.clientId | quote }}
- name: ATRIUM_OIDC_SCOPES
  value: {{ .Values.oidc.scopes | quote }}
- name: ATRIUM_OIDC_GROUPS_CLAIM
  value: {{ .Values.oidc.groupsClaim | quote }}
- name: ATRIUM_OIDC_USERNAME_CLAIM
  value: {{ .Values.oidc.usernameClaim | quote }}
{{- if .Values.oidc.roleGroups }}
- name: ATRIUM_OIDC_ROLE_GROUPS
  value: {{ .Values.oidc.roleGroups | quote }}
{{- end }}
{{- if .Values.oidc.existingSecret }}
- name: ATRIUM_OIDC_CLIENT_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .Values.oidc.existingSecret }}
      key: {{ .Values.oidc.key }}
{{- end }}
{{- end }}
{{- if .Values.smtp.host }}
- name: ATRIUM_SMTP_HOST
  value: {{ .Values.smtp.host | quote }}
- name: ATRIUM_SMTP_PORT
  value: {{ .Values.smtp.port | quote }}
- name: ATRIUM_SMTP_FROM
  value: {{ .Values.smtp.from | quote }}
- name: ATRIUM_SMTP_STARTTLS
  value: {{ .Values.smtp.starttls | quote }}
{{- if .Values.smtp.username }}
- name: ATRIUM_SMTP_USERNAME
  value: {{ .Values.smtp.username | quote }}
{{- end }}
{{- if .Values.smtp.existingSecret }}
- name: ATRIUM_SMTP_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.smtp.existingSecret }}
      key: {{ .Values.smtp.key }}
{{- end }}
{{- end }}
{{- if has "openstack" .Values.portal.backends }}
- name: ATRIUM_OS_CLOUD
  value: {{ .Values.openstack.cloud | quote }}
- name: OS_CLIENT_CONFIG_FILE
  value: /etc/openstack/clouds.yaml
- name: ATRIUM_OS_SECURITY_GROUPS
  value: {{ join "," .Values.openstack.securityGroups | quote }}
{{- if .Values.openstack.networks }}
- name: ATRIUM_OS_NETWORKS
  value: {{ join "," .Values.openstack.networks | quote }}
{{- end }}
{{- if .Values.openstack.floatingNetwork }}
- name: ATRIUM_OS_FLOATING_NETWORK
  value: {{ .Values.openstack.floatingNetwork | quote }}
{{- end }}
{{- end }}
{{- range $name, $value := .Values.portal.extraEnv }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end -}}

{{/* The Job pods' shape: restricted security contexts, no API token, writable /tmp. */}}
{{- define "atrium.jobPod" -}}
restartPolicy: Never
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
securityContext: {{- toYaml .Values.portal.podSecurityContext | nindent 2 }}
{{- with .Values.portal.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.portal.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
