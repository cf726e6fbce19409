"""log4j2 configuration for TorchServe's Java frontend: everything to stdout
(a container's log is its stdout; TorchServe's default writes files under
./logs), at the level of SAGEMAKER_CONTAINER_LOG_LEVEL, which the AWS toolkit
ignores for the Java side."""
from __future__ import annotations

import logging


def log4j_level(py_level: int) -> str:
    if py_level <= logging.DEBUG:
        return "debug"
    if py_level <= logging.INFO:
        return "info"
    if py_level <= logging.WARNING:
        return "warn"
    if py_level <= logging.ERROR:
        return "error"
    return "fatal"


def render(py_level: int) -> str:
    level = log4j_level(py_level)
    # Access lines are INFO: shown at INFO and below. Metrics lines only at DEBUG.
    metrics = "all" if py_level <= logging.DEBUG else "off"
    # TorchServe logs several INFO lines per request: only from DEBUG down.
    ts_level = level if py_level <= logging.DEBUG else "warn"
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<Configuration>
  <Appenders>
    <Console name="STDOUT" target="SYSTEM_OUT">
      <PatternLayout pattern="%d{{ISO8601}} [%-5p] %t %c - %m%n"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="ACCESS_LOG" level="{level}" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="MODEL_LOG" level="{level}" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="MODEL_METRICS" level="{metrics}" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="TS_METRICS" level="{metrics}" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Logger name="io.netty" level="error"/>
    <Logger name="org.apache" level="off"/>
    <Logger name="org.pytorch.serve" level="{ts_level}" additivity="false"><AppenderRef ref="STDOUT"/></Logger>
    <Root level="{level}"><AppenderRef ref="STDOUT"/></Root>
  </Loggers>
</Configuration>
"""
