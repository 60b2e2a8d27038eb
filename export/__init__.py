"""vimc.export: deployment routes (installed from the export/ folder)."""
