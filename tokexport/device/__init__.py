"""What runs on the device, not in tokexport: ``verify_on_device.py`` (copied into every deploy bundle)."""
