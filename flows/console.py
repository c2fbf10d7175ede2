"""Prefect's console log handler, printing messages literally: Prefect's own handler lets rich turn
`:name:` into emoji, so a gate message about `opencv_dnn:new:` printed a 🆕. Chosen in flows/__init__.py
(PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS), Prefect's documented override of its logging.yml."""

from __future__ import annotations

import logging

from prefect.logging.handlers import PrefectConsoleHandler


class LiteralConsoleHandler(PrefectConsoleHandler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), soft_wrap=True, emoji=False, markup=False)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
