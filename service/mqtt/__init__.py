"""The MQTT API: one topic table (:mod:`service.mqtt.topics`), the client, the generated docs."""
