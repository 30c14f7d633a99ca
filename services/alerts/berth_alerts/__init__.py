"""Berth alerts: relay of alerts and bus events to messengers; Grafana dashboard sync."""
