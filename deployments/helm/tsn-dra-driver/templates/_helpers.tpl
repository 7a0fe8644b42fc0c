{{- define "tsn-dra-driver.namespace" -}}
{{ .Values.namespace.name }}
{{- end -}}
