# fish completion for kechid(8)
# Installed as .../fish/vendor_completions.d/kechid.fish

function __kechid_apps --description 'kechi app names'
    for f in /etc/kechi/*.toml
        string replace -r '^.*/([^/]+)\.toml$' '$1' -- $f
    end
end

complete -c kechid -s h -l help -d 'Print help'
complete -c kechid -s V -l version -d 'Print version'
complete -c kechid -l foreground -d 'Run without a systemd manager: workers are plain children'
complete -c kechid -l user -d "Use the calling user's systemd manager"
complete -c kechid -a '(__kechid_apps)' -d app
complete -c kechid -F -a '(__fish_complete_suffix .toml)'
