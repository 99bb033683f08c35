"""The appliance's console (tty1 and the serial console): the first-boot wizard until the
appliance is set up, then a numbered menu. See firstboot/README.md and docs/operations.md."""
