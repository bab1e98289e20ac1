"""Icons shipped with the plugin (a package so npe2 can resolve them)."""
