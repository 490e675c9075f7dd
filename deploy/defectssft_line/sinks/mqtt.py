"""MQTT: one JSON message per part (QoS 1), a retained status topic, a last will (``paho-mqtt``).

``--mqtt HOST[:PORT]`` (default port 1883) with ``--mqtt-topic PREFIX`` (default
``defectssft/line``):

- ``PREFIX/result``: the result record plus ``part_id``, ``counter`` and ``counts``, QoS 1.
  A message in flight when the connection drops is sent again after the reconnect (at least
  once: ``counter`` tells a repeat apart).
- ``PREFIX/status``: retained; ``{"state": "online", ...}`` with the sinks' dropped counts, the
  alarm and the archive's state, refreshed every few seconds; the broker publishes the last
  will ``{"state": "offline"}`` there when the line PC vanishes, and ``stopped`` is written on
  a clean exit.

``username``/``password``/``client_id``/``tls`` (a CA file) come from the sinks YAML.
Needs the ``mqtt`` extra.
"""

from __future__ import annotations

import json
import time
from typing import Any

from defectssft_line.model import LineError
from defectssft_line.sinks.base import Sink

STATUS_EVERY_S = 5.0


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ImportError as e:
        raise LineError("MQTT needs the mqtt extra: pip install 'defectssft-line[mqtt]'") from e
    return mqtt


class MqttSink(Sink):
    kind = "mqtt"

    def __init__(
        self,
        host: str,
        port: int = 1883,
        topic: str = "defectssft/line",
        client_id: str = "",
        username: str | None = None,
        password: str | None = None,
        tls: str | None = None,
        timeout: float = 5.0,
        **kw: Any,
    ) -> None:
        super().__init__(f"MQTT {host}:{port}", **kw)
        self.host, self.port, self.topic = host, int(port), topic.rstrip("/")
        self.client_id = client_id or f"defectssft-line-{int(time.time())}"
        self.username, self.password, self.tls, self.timeout = username, password, tls, timeout
        self._client: Any = None
        self._last_status = 0.0

    @property
    def status_topic(self) -> str:
        return f"{self.topic}/status"

    def open(self) -> None:
        mqtt = _paho()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)
        self._client = client
        client.will_set(self.status_topic, json.dumps({"state": "offline"}), qos=1, retain=True)
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            client.tls_set(ca_certs=self.tls)
        client.on_connect = self._on_connect
        client.connect(self.host, self.port, keepalive=30)
        client.loop_start()
        deadline = time.monotonic() + self.timeout
        while not client.is_connected():
            if time.monotonic() > deadline:
                raise ConnectionError(f"no CONNACK from {self.host}:{self.port}")
            time.sleep(0.01)
        self._publish(self.status_topic, {"state": "online", **self._status()}, retain=True)
        self._last_status = time.monotonic()

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any, _p: Any) -> None:
        """Also after paho's own reconnect: the retained status says online again (the broker
        had published the last will)."""
        if not getattr(reason, "is_failure", False):
            status = {"state": "online", **self._status()}
            client.publish(self.status_topic, json.dumps(status), qos=1, retain=True)

    def _publish(self, topic: str, payload: dict[str, Any], retain: bool = False) -> None:
        client = self._client
        if client is None or not client.is_connected():
            raise ConnectionError("not connected")
        info = client.publish(topic, json.dumps(payload), qos=1, retain=retain)
        info.wait_for_publish(self.timeout)
        if not info.is_published():
            raise ConnectionError(f"no PUBACK within {self.timeout:g} s")

    def send(self, msg: dict[str, Any]) -> None:
        if msg.get("type") != "result":
            return
        payload = {k: v for k, v in msg.items() if k != "type"}
        self._publish(f"{self.topic}/result", payload)

    def beat(self, status: dict[str, Any]) -> None:
        if time.monotonic() - self._last_status >= STATUS_EVERY_S:
            self._publish(self.status_topic, {"state": "online", **status}, retain=True)
            self._last_status = time.monotonic()

    def farewell(self, status: dict[str, Any]) -> None:
        """A clean exit: the retained status says stopped (not the last will's offline)."""
        self._publish(self.status_topic, {"state": "stopped", **status}, retain=True)

    def shut(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        try:
            client.disconnect()
            client.loop_stop()
        except Exception:  # noqa: BLE001
            pass
