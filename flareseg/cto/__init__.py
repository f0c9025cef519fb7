"""flareseg.cto"""
