"""Human-readable output: terminal tables, report.md sections, PNG plots."""

from .tables import (
    data_name,
    fmt_acc,
    fmt_count,
    fmt_ms,
    fmt_pct,
    markdown_table,
    pct_removed,
    text_table,
)

__all__ = ["data_name", "fmt_acc", "fmt_count", "fmt_ms", "fmt_pct", "markdown_table",
           "pct_removed", "text_table"]
