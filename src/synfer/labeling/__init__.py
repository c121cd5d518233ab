"""Stage 4: label synthetic faces (FERAnno and other annotators, ensemble voting)."""
