#!/bin/sh
export GH_TOKEN=ghp_3gY37avIQ0Dop5PR5ypMZYt6yPpw5UDnfYBX
gh release list
