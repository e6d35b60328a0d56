"""Static files of the console (a package only so that package-data ships them in the wheel)."""
