"""The papers' metrics with per-group breakdowns and k-fold summaries, and the reports (JSON, Markdown, PNG)
that hold them. Plain NumPy; the figures in ``plots`` need matplotlib, imported only when drawing."""
