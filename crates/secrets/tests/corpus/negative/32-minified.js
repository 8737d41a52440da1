!function(e,t){"object"==typeof exports?module.exports=t():e.lib=t()}(this,function(){var n=function(e){return e.replace(/[A-Z]/g,function(e){return"-"+e.toLowerCase()})};return{kebab:n}});
