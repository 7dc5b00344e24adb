"""Every figure of the project: one style, one ``save`` (PNG + PDF, byte-reproducible), one registry of figure
names that the rules read, one module per family of figures. Reads the tables that ``analysis``, ``bench`` and
``claims`` write; nothing outside this package calls ``savefig``."""
