"""flareseg.pseudolabel"""
