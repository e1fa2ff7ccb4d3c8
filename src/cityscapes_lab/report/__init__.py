"""Reports of a study: the results table (Markdown and CSV), the figure, and a picture panel."""

from .build import ReportFiles, write_report

__all__ = ["ReportFiles", "write_report"]
