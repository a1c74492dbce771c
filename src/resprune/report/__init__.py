"""Human-readable output: terminal tables, report.md sections, PNG plots."""

from .tables import fmt_acc, fmt_count, fmt_ms, fmt_pct, markdown_table, pct_removed, text_table

__all__ = ["fmt_acc", "fmt_count", "fmt_ms", "fmt_pct", "markdown_table", "pct_removed",
           "text_table"]
