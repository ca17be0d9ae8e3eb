"""Qt widgets (dock widgets of the npe2 manifest) and worker wiring; import submodules explicitly."""
